"""evaluate: score the fine-tuned model (or, with eval.adapter=false, the base model alone) on the test split.

Loads models/base/<model>/ with the training quantization (eval.unquantized_base=true: without, as seed B
did) plus the adapter of models/adapter/<task>/ (or eval.adapter_dir), builds every prompt with the training
prompt code, and runs eval.mode: greedy (batched, length-sorted, left-padded, stops at EOS, at most
eval.max_new_tokens; the answer is parsed by task.parser) or score (the most likely label).

Writes metrics/eval.json (metrics/zeroshot.json without adapter) and metrics/eval/<split>/: predictions.jsonl,
confusion.csv, confusion.png, classification_report.txt; energy to metrics/carbon/evaluate[_zeroshot].json.

Any Alpaca JSONL can be scored by hand: python -m stages.evaluate eval.data=rows.jsonl
(results in metrics/external/rows.json and metrics/external/rows/).
"""
from __future__ import annotations

import sys
from pathlib import Path

from hatetune import carbon, config, evaluation, inference, models, parsing, training
from hatetune.errors import HatetuneError, exit_on_error


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, argv)
    labels = list(cfg.task.labels.names)
    parse = parsing.get_parser(cfg.task.parser, labels)
    sets = {name: (path, *evaluation.load_rows(path, labels)) for name, path in evaluation.eval_files(cfg).items()}
    base_dir = models.base_model_dir(cfg)
    adapter = (cfg.eval.adapter_dir or training.adapter_dir(cfg)) if cfg.eval.adapter else None
    stage = evaluation.carbon_stage(cfg)

    results, seconds = {}, 0.0
    with carbon.track_emissions(stage or "evaluate", cfg.carbon.country_iso_code, enabled=stage is not None):
        # an adapter folder carries the tokenizer it was trained with (chat template included)
        has_tokenizer = adapter is not None and (Path(adapter) / "tokenizer_config.json").is_file()
        tokenizer = models.load_tokenizer(adapter if has_tokenizer else base_dir, padding_side="left",
                                          trust_remote_code=cfg.model.trust_remote_code)
        model = models.load_model(cfg.model, base_dir, quantize=not cfg.eval.unquantized_base, adapter_dir=adapter)
        for name, (path, rows, gold) in sets.items():
            run = inference.predict(model, tokenizer, rows, cfg.task.prompt, parse, labels, cfg.eval.mode,
                                    cfg.eval.max_new_tokens, cfg.eval.batch_size, prefix_cache=cfg.eval.prefix_cache,
                                    agreement=cfg.eval.agreement, desc=name)
            results[name] = evaluation.score(rows, gold, run["predicted"], labels, run["outputs"], run["other"],
                                             "greedy_label" if cfg.eval.mode == "score" else "score_label")
            seconds += run["seconds"]
            print(evaluation.summary_line(name, results[name]["metrics"]))
    if not results:
        raise HatetuneError("nothing was evaluated", field="eval.splits")

    n = sum(r["metrics"]["n"] for r in results.values())
    evaluation.write_results(evaluation.output_base(cfg), results, title="fine-tuned" if adapter else "zero-shot",
                             run_info={"mode": cfg.eval.mode, "adapter": str(adapter) if adapter else None,
                                       "base_model": str(base_dir), "batch_size": cfg.eval.batch_size,
                                       "prefix_cache": cfg.eval.prefix_cache, "examples": n})  # no timings:
    # outputs stay byte-identical on rerun; the time is in the log and in metrics/carbon/<stage>.json
    print(f"{n} examples in {seconds:.1f} s ({n / max(seconds, 1e-9):.1f} examples/s) -> "
          f"{evaluation.output_base(cfg)}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
