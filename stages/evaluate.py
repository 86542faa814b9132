"""evaluate: score the fine-tuned model (or, with eval.adapter=false, the base model alone) on eval.splits.

Loads models/base/<model>/ with the training quantization (eval.unquantized_base=true: without, as seed B
did) plus the adapter of models/adapter/<task>/ (or eval.adapter_dir), builds and tokenises every prompt with
the training prompt code, truncated by training's rule (train.cutoff_len), and runs eval.mode:
- score: every label's log-likelihood (eval.score_method: full = answer + EOS, or first_token); the label is
  decided by eval.calibration: a temperature and a threshold on P(positive label) fitted on the dev split (for
  macro-F1 or a target precision), applied to every split (method none: plain argmax);
- greedy: batched decoding that stops at EOS (at most eval.max_new_tokens), parsed by task.parser.
With eval.agreement both modes run on the same prompt pass and their agreement is reported.
Results are also broken down by group (task.breakdowns: DynaHate's target, type, level, round; MHS's target
identities), the largest accuracy gap between target groups a metric. With eval.functional.enabled the functional
suite (HateCheck, from the functional_suite stage) is scored too, with the same decision rule, in its own terms
(hateful / non-hateful through task.functional_labels): accuracy per functionality, target identity and gold label,
the worst functionality a metric.

Writes metrics/eval.json (metrics/zeroshot.json without adapter): {split or suite: metrics}, and metrics/eval/:
<split or suite>/{predictions.jsonl, confusion.csv, confusion.png, classification_report.txt, groups.json},
run.json and, when calibrated, calibration.json (the decision rule the service applies too), pr_curve.png,
reliability.png; energy to metrics/carbon/evaluate[_zeroshot].json.

Any Alpaca JSONL can be scored by hand: python -m stages.evaluate eval.data=rows.jsonl
(results in metrics/external/rows.json and metrics/external/rows/).

A generation task (stophate) is evaluated by its replies instead (hatetune.generation): the fine-tuned model
here, and in the evaluate_zeroshot stage the base model alone and with each of task.prompted_systems as system
prompt, answer the same seeded sample of test posts per set (eval.generation: sets, max_prompts), with each
decoding (sampled: temperature / top_p, seeded; greedy), at most eval.generation.max_new_tokens new tokens.
Writes metrics/eval.json ({system: {decoding: {set: stop rate, ...}, over_refusal_rate, ...}}) and
metrics/eval/<system>/<decoding>/replies.jsonl; the judge stage then labels every reply hateful or not.
With eval.functional.enabled every system also answers the functional suite's cases (a seeded sample of each
functionality, eval.generation.functional), a stop counting as hateful: eval.json's <suite>: {system: {decoding:
functional_accuracy (stopped iff hateful), stop rate per gold label, worst functionality}}, and the stop rate per
functionality, target identity and gold label in metrics/eval/<suite>/<system>/<decoding>/groups.json.
"""
from __future__ import annotations

import sys
from pathlib import Path

from hatetune import (calibration, carbon, config, evaluation, functional, generation, group_metrics,
                      labeling, metrics, models, paths)
from hatetune.errors import HatetuneError, exit_on_error
from hatetune.io import read_jsonl
from hatetune.runinfo import environment


def agreements(run: dict) -> dict:
    """How often the two modes, and the two scoring methods, pick the same label."""
    found = {}
    if run["greedy_labels"] is not None and run["score_labels"] is not None:
        found["agreement_greedy_score"] = metrics.agreement(run["greedy_labels"], run["score_labels"])
    if run["first_token_labels"] is not None:
        found["agreement_score_full_first_token"] = metrics.agreement(run["full_labels"], run["first_token_labels"])
    return found


def evaluate_generation(cfg, base_dir: Path, adapter: Path | None, stage: str | None) -> int:
    """The replies of the fine-tuned model (with adapter) or of the base systems (without) to the test posts."""
    g = cfg.eval.generation
    if cfg.eval.data:
        raise HatetuneError("a generation task evaluates its test split (eval.data is for classification tasks)",
                            field="eval.data")
    test_file = paths.split_file(cfg.task.name, "test")
    if not test_file.is_file():
        raise HatetuneError("evaluation data not found (run the convert stage)", file=str(test_file))
    rows = generation.select(read_jsonl(test_file), g.sets, g.max_prompts, cfg.seed)
    if not rows:
        raise HatetuneError(f"no test post in the sets {list(g.sets)}", file=str(test_file))
    suite = None
    if cfg.eval.functional.enabled:  # a stop counts as hateful; a seeded sample of each functionality's cases
        suite = functional.sample(functional.load(paths.FUNCTIONAL_DIR, cfg.eval.functional.source.name,
                                                  functional.STOP_LABELS, cfg.task.prompt),
                                  g.functional.max_per_functionality, cfg.seed)
    with carbon.track_emissions(stage or "evaluate", cfg.carbon.country_iso_code,
                                paths.carbon_file(stage or "evaluate"), enabled=stage is not None):
        tokenizer = models.load_tokenizer(adapter or base_dir, cfg.model, padding_side="left")
        model = models.load_model(cfg.model, base_dir, quantize=not cfg.eval.unquantized_base, adapter_dir=adapter)
        results = generation.evaluate_systems(model, tokenizer, rows, cfg, adapter is not None)
        answers = (generation.answer_suite(model, tokenizer, suite.rows, cfg, adapter is not None, suite.name)
                   if suite is not None else {})
    for name, decodings in results.items():
        for decoding, result in decodings.items():
            print(generation.summary_line(name, decoding, result["metrics"]))
    scored = {name: {decoding: evaluation.score_suite_replies(suite, texts, cfg.task.stop_message,
                                                              cfg.eval.min_group_size,
                                                              {"finished": finished, "truncated": cut})
                     for decoding, (texts, finished, cut) in decodings.items()} for name, decodings in answers.items()}
    for name, decodings in scored.items():
        for decoding, result in decodings.items():
            m = result["metrics"]
            hateful, other = ("–" if m[k] is None else f"{m[k]:.0%}" for k in ("stop_rate_hateful",
                                                                               "stop_rate_non_hateful"))
            print(f"{suite.name}: {name} [{decoding}]: functional accuracy {m['functional_accuracy']:.2%}, stop rate "
                  f"{hateful} on hateful / {other} on non-hateful cases (n={m['n']})")
    base = evaluation.output_base(cfg)
    suite_info = ({"functional": {"name": suite.name, "cases": len(suite.rows),
                                  "max_per_functionality": g.functional.max_per_functionality,
                                  "decodings": list(g.functional.decodings)}} if suite is not None else {})
    generation.write_results(base, results, {
        "adapter": str(adapter) if adapter else None, "base_model": str(base_dir), "prompts": len(rows),
        "sets": list(g.sets), "decodings": list(g.decodings), "temperature": g.temperature, "top_p": g.top_p,
        "max_new_tokens": g.max_new_tokens, "seed": cfg.seed, "batch_size": cfg.eval.batch_size, **suite_info,
        **environment()}, suite=(suite.name, scored) if suite is not None else None)
    print(f"{len(rows)} posts x {sum(len(d) for d in results.values())} system-decodings -> {paths.results_json(base)}")
    return 0


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "evaluate", argv)
    if cfg.task.kind == "generation":
        adapter = Path(cfg.eval.adapter_dir or paths.adapter_dir(cfg.task.name)) if cfg.eval.adapter else None
        return evaluate_generation(cfg, paths.base_model_dir(cfg.model.name), adapter,
                                   evaluation.carbon_stage(cfg))
    ev, labels = cfg.eval, labeling.labels_of(cfg)
    sets = {name: evaluation.load_rows(path, labels) for name, path in evaluation.eval_files(cfg).items()}
    task_sets = list(sets)  # the suite is not the task's data: no threshold fitting or PR curves on it
    suite = functional.load(paths.FUNCTIONAL_DIR, ev.functional.source.name, cfg.task.functional_labels,
                            cfg.task.prompt) if ev.functional.enabled else None
    if suite is not None:
        sets[suite.name] = (suite.rows, suite.gold)
    base_dir = paths.base_model_dir(cfg.model.name)
    adapter = Path(ev.adapter_dir or paths.adapter_dir(cfg.task.name)) if ev.adapter else None
    stage = evaluation.carbon_stage(cfg)

    runs = {}
    with carbon.track_emissions(stage or "evaluate", cfg.carbon.country_iso_code,
                                paths.carbon_file(stage or "evaluate"), enabled=stage is not None):
        tokenizer = models.load_tokenizer(adapter or base_dir, cfg.model, padding_side="left")
        model = models.load_model(cfg.model, base_dir, quantize=not ev.unquantized_base, adapter_dir=adapter)
        for name, (rows, _) in sets.items():
            runs[name] = labeling.classify_rows(model, tokenizer, rows, cfg, progress=True, desc=name)

    summary = None
    if ev.mode == "score" and ev.calibration.method == "threshold":
        gold = {name: g for name, (_, g) in sets.items()}
        cal = ev.calibration
        rule = calibration.fit(runs["dev"]["log_probs"], gold["dev"], labels, cal.positive, cal.objective,
                               cal.target_precision, cal.temperature)
        summary = calibration.summarise(rule, {n: runs[n]["log_probs"] for n in task_sets}, gold)
        for run in runs.values():  # the service and the export apply the same rule through the same call
            labeling.apply_rule(run, rule)
        print(f"decision rule (fitted on dev): P({rule['positive']}) >= {rule['threshold']:.4f} at temperature "
              f"{rule['temperature']:g} -> dev macro-F1 {rule['dev']['macro_f1']:.4f}")

    groups = group_metrics.Breakdown(positive=labels[0], min_size=ev.min_group_size, gap=cfg.task.breakdowns.gap,
                                     not_groups=list(cfg.task.breakdowns.not_groups))
    results = {}
    for name, (rows, gold) in sets.items():
        run = runs[name]
        columns = {"greedy_label": run["greedy_labels"], "score_label": run["score_labels"],
                   "p_positive": [round(p, 6) for p in run["p_positive"]] if "p_positive" in run else None,
                   "log_probs": [dict(zip(labels, (round(v, 4) for v in row))) for row in run["log_probs"]]
                   if run["log_probs"] else None, "truncated": run["truncated"]}
        columns = {k: v for k, v in columns.items() if v is not None}
        extra = {**agreements(run), "truncated_prompts": sum(run["truncated"]),
                 **(summary["metrics"].get(name, {}) if summary else {})}
        if suite is not None and name == suite.name:
            results[name] = evaluation.score_suite(suite, run["predicted"], cfg.task.functional_labels,
                                                   ev.min_group_size, run["outputs"], columns, extra)
        else:
            results[name] = evaluation.score(rows, gold, run["predicted"], labels, run["outputs"], columns, extra,
                                             breakdown=groups)
        print(evaluation.summary_line(name, results[name]["metrics"]))

    n = sum(r["metrics"]["n"] for r in results.values())
    seconds = sum(r["seconds"] for r in runs.values())
    base = evaluation.output_base(cfg)
    evaluation.write_results(base, results, title="fine-tuned" if adapter else "zero-shot", calibration=summary,
                             run_info={"mode": ev.mode, "score_method": ev.score_method,
                                       "adapter": str(adapter) if adapter else None, "base_model": str(base_dir),
                                       "batch_size": ev.batch_size, "prefix_cache": ev.prefix_cache,
                                       "examples": n, **environment()})
    # no timings in the outputs (they stay byte-identical on rerun): the time is here and in metrics/carbon/
    print(f"{n} examples in {seconds:.1f} s ({n / max(seconds, 1e-9):.1f} examples/s) -> {paths.results_json(base)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
