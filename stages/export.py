"""export: the fine-tuned model as one GGUF file for Ollama and llama.cpp, with an Ollama Modelfile, verified.

1. Merges the adapter of models/adapter/<task>/ into an unquantized float32 copy of models/base/<model>/ (never
   into 4-bit weights). An adapter that trains lm_head over tied embeddings is merged with the head untied: it
   could not be a GGUF LoRA or a vLLM LoRA module.
2. Writes models/export/<task>/model.gguf (export.qtype: Q8_0 by default, F16, or F32) with the `gguf` package,
   the tokenizer and metadata carried over from the mirror's source GGUF, and models/export/<task>/Modelfile whose
   TEMPLATE renders exactly the training prompt (`ollama create hatetune-<task> -f .../Modelfile`). A base without
   a source GGUF (Hub or local folder) gets models/export/<task>/merged/ instead: the merged Hugging Face folder
   for llama.cpp's convert_hf_to_gguf.py (see the README).
3. Verifies: loads the GGUF back with transformers and labels the test split (export.verify_rows rows; null: all)
   with the evaluate stage's prompt and decoding (in score mode, through the decision rule the evaluate stage
   fitted on dev, metrics/eval/calibration.json), and writes metrics/export.json: label agreement with the merged
   model (target >= 0.99, a floor on the rows the merged model decides by more than export.tie_margin, which
   rounding cannot flip; on all rows the floor is export.min_agreement) and with metrics/eval's predictions.
   A generation task (stophate) answers with replies, not labels: steps 1 and 2 only (the Modelfile's
   num_predict is eval.generation.max_new_tokens), and metrics/export.json says the labels were not verified.
"""
from __future__ import annotations

import json
import sys
import time

from hatetune import carbon, config, evaluation, inference, labeling, model_sources, models, paths, prompts, sources
from hatetune.errors import HatetuneError, exit_on_error
from hatetune.export import gguf_file, merge, modelfile, verify
from hatetune.io import atomic_path, read_jsonl, write_json


def evaluate_predictions(ids: list) -> list | None:
    """The evaluate stage's test-split labels for `ids` (None when it did not evaluate these rows)."""
    path = paths.predictions_file(paths.EVAL, "test")
    if not path.is_file():
        return None
    predicted = {r["id"]: r["predicted"] for r in read_jsonl(path)}
    return [predicted[i] for i in ids] if all(i in predicted for i in ids) else None


def log(message: str, since: float) -> None:
    print(f"export: {message} ({time.perf_counter() - since:.0f} s)", file=sys.stderr, flush=True)


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "export", argv)
    task, ex = cfg.task.name, cfg.export
    adapter, out = paths.adapter_dir(task), paths.export_dir(task)
    source = json.loads(paths.base_source_file(cfg.model.name).read_text(encoding="utf-8"))
    labelled = cfg.task.kind != "generation"  # a generation task's replies are no labels to verify
    if labelled:
        labels = labeling.labels_of(cfg)
        rows, gold = evaluation.load_rows(paths.split_file(task, "test"), labels)
        rows, gold = (rows[:ex.verify_rows], gold[:ex.verify_rows]) if ex.verify_rows else (rows, gold)
        ids = [r.get("id", str(i + 1)) for i, r in enumerate(rows)]
        rule = labeling.decision_rule(cfg, paths.calibration_file(paths.results_base(paths.EVAL)), adapter)
        new_tokens = cfg.eval.max_new_tokens
    else:
        rows, new_tokens = [], cfg.eval.generation.max_new_tokens
    # label scores for the flip diagnostics: free in greedy mode (same prompt pass), always there in score mode
    scores = cfg.eval.mode == "greedy"
    start = time.perf_counter()

    with carbon.track_emissions("export", cfg.carbon.country_iso_code, paths.carbon_file("export")):
        tokenizer = models.load_tokenizer(adapter, cfg.model, padding_side="left")
        model = merge.merge_adapter(cfg.model, paths.base_model_dir(cfg.model.name), adapter)
        head = merge.trains_output_head(adapter)
        if head:
            print("export: the adapter trains lm_head over the base's output head: merged (a LoRA on lm_head "
                  "cannot be a GGUF LoRA, and vLLM rejects it as a LoRA module)", file=sys.stderr)
        log("merged the adapter into the float32 base", start)
        merged = labeling.classify_rows(model, tokenizer, rows, cfg, rule=rule, agreement=scores, progress=True,
                                        desc="merged model") if labelled else None
        stops = modelfile.stop_tokens(tokenizer, inference.eos_token_ids(model, tokenizer))
        text = modelfile.modelfile_text(modelfile.ollama_template(cfg.task.prompt, tokenizer), stops,
                                        new_tokens, paths.GGUF_FILE)
        gguf_info, exported = None, None
        with atomic_path(out) as tmp:
            tmp.mkdir(parents=True)
            (tmp / paths.MODELFILE).write_text(text, encoding="utf-8")
            if source["kind"] == "gguf":
                src = model_sources.source_gguf(source, sources.mirror_root(cfg.download.mirror))
                overrides = gguf_file.header_overrides(tokenizer, prompts.adds_special_tokens(cfg.task.prompt))
                gguf_info = gguf_file.write_gguf(model, src, tmp / paths.GGUF_FILE, ex.qtype, overrides)
                log(f"wrote {paths.GGUF_FILE} ({ex.qtype}, {gguf_info['bytes'] / 1e6:.1f} MB)", start)
                del model
                if labelled:
                    gguf_model, gguf_tokenizer = gguf_file.load_gguf(tmp / paths.GGUF_FILE)
                    exported = labeling.classify_rows(gguf_model, gguf_tokenizer, rows, cfg, rule=rule,
                                                      agreement=scores, progress=True, desc="GGUF")
            else:
                print(f"export: the base ({model_sources.describe(source)}) has no source GGUF: writing the "
                      f"merged model to {out / paths.MERGED_DIR} for llama.cpp's convert_hf_to_gguf.py",
                      file=sys.stderr)
                merge.save_merged(model, tokenizer, tmp / paths.MERGED_DIR)
            result = {"format": "gguf" if gguf_info else "merged_hf", "adapter_trains_lm_head": head,
                      **{k: gguf_info[k] if gguf_info else None for k in ("qtype", "bytes", "sha256", "tied")},
                      "labels_verified": labelled}
            if labelled:
                result.update(verify.compare(exported, merged, gold, labels, evaluate_predictions(ids), rule,
                                             ex.tie_margin))
            agreement, beyond_ties = result.get("agreement_exported_merged"), result.get("agreement_beyond_ties")
            if agreement is not None and agreement < ex.min_agreement:
                raise HatetuneError(f"the GGUF's labels agree with the merged model's on only {agreement:.2%} of "
                                    f"{len(rows)} test rows (export.min_agreement {ex.min_agreement}; label score "
                                    f"error up to {result['score_abs_diff_max']}): the export is broken")
            if beyond_ties is not None and beyond_ties < verify.TARGET_AGREEMENT:
                raise HatetuneError(f"the GGUF's labels agree with the merged model's on only {beyond_ties:.2%} of "
                                    f"the {result['rows_beyond_ties']} test rows it decides by more than "
                                    f"export.tie_margin {ex.tie_margin} (target {verify.TARGET_AGREEMENT}): flips "
                                    f"that rounding does not explain, the export is broken")
    write_json(paths.EXPORT_METRICS, result)
    if not labelled:
        print("export: a generation task: its replies are not labels, so the GGUF is not verified by labels",
              file=sys.stderr)
    for key in ("agreement_exported_merged", "agreement_exported_evaluate", "agreement_merged_evaluate",
                "agreement_beyond_ties"):
        if result.get(key) is not None:
            n = result["rows_beyond_ties"] if key == "agreement_beyond_ties" else len(rows)
            print(f"export: {key} = {result[key]:.4f} on {n} test rows")
    if result.get("flipped_rows"):
        print(f"export: {result['flipped_rows']} flipped labels, all where the merged model's label margin was "
              f"<= {result['max_merged_margin_of_flips']} (label score error: mean {result['score_abs_diff_mean']}, "
              f"max {result['score_abs_diff_max']})")
    if agreement is not None and agreement < verify.TARGET_AGREEMENT:
        beyond = (f"met on the {result['rows_beyond_ties']} rows beyond near-ties (margin > export.tie_margin)"
                  if result.get("agreement_beyond_ties") is not None else "no label scores to tell near-ties apart")
        print(f"export: GGUF/merged agreement below the {verify.TARGET_AGREEMENT} target on all rows; {beyond}",
              file=sys.stderr)
    log(f"-> {out}, {paths.EXPORT_METRICS}", start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
