"""What the evaluate and baseline stages share: which rows to score, gold labels, and the result files.

Results of a run named <out> (metrics/eval, metrics/zeroshot, metrics/baseline, metrics/external/<stem>):
- `<out>.json`: {split: metrics} (git-tracked, a DVC metric; deterministic: no timings in it);
- `<out>/<split>/predictions.jsonl` (id, text, gold, raw_output, predicted [, score_label | greedy_label], and
  the row's extra keys: whom the post targets, a test case's functionality), `confusion.csv` (actual,predicted
  per example, for DVC's confusion template), `confusion.png`, `classification_report.txt`, `groups.json` (the
  results per group of every extra key, `hatetune.group_metrics`); `<out>/run.json`: what ran and how fast.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from . import functional
from . import metrics as M
from . import paths
from .errors import HatetuneError
from .group_metrics import Breakdown, breakdown_keys, extremes, group_tables
from .prompts import extra_keys
from .io import atomic_path, read_jsonl, write_json, write_jsonl
from .plots import plot_confusion, plot_pr_curves, plot_reliability


def output_base(cfg) -> Path:
    """Where a run writes `<base>.json` and `<base>/`: eval.output, else by what is evaluated."""
    if cfg.eval.output:
        return Path(cfg.eval.output)
    if cfg.eval.data:
        return paths.external_results_base(cfg.eval.data)
    return paths.results_base(paths.EVAL if cfg.eval.adapter else paths.ZEROSHOT)


def carbon_stage(cfg) -> Optional[str]:
    """The name codecarbon's measurement is filed under (metrics/carbon/<name>.json); None for hand runs."""
    if cfg.eval.data or cfg.eval.output:
        return None
    return "evaluate" if cfg.eval.adapter else "evaluate_zeroshot"


def eval_files(cfg) -> Dict[str, Path]:
    """{set name: Alpaca JSONL}: eval.data alone when given, else data/processed/<task>/<split>.jsonl."""
    files = {split: paths.split_file(cfg.task.name, split) for split in cfg.eval.splits}
    if cfg.eval.data:  # alone, or with the dev split its decision threshold is fitted on
        dev = {"dev": files["dev"]} if cfg.eval.calibration.method == "threshold" else {}
        return {**dev, Path(cfg.eval.data).stem: Path(cfg.eval.data)}
    return files


def load_rows(path: Path, labels: Sequence[str]) -> tuple[List[dict], List[str]]:
    """Alpaca rows of `path` and their gold labels in the task's spelling (matched case-insensitively).

    A missing file, a row without instruction / input / output, or a gold label outside the task's labels
    fails with the file, row (1-based line) and field.
    """
    if not path.is_file():
        raise HatetuneError("evaluation data not found (run the convert stage, or check eval.data)", file=str(path))
    rows = read_jsonl(path)
    if not rows:
        raise HatetuneError("no rows to evaluate", file=str(path))
    canonical = {name.lower(): name for name in labels}
    gold = []
    for i, row in enumerate(rows, start=1):
        for key in ("instruction", "input", "output"):
            if not isinstance(row.get(key), str):
                raise HatetuneError("missing or not a string", file=str(path), row=i, field=key)
        label = canonical.get(row["output"].strip().lower())
        if label is None:
            raise HatetuneError(f"gold label {row['output']!r} is not one of the task's labels {list(labels)}",
                                file=str(path), row=i, field="output")
        gold.append(label)
    return rows, gold


def score(rows: Sequence[Mapping], gold: Sequence[str], predicted: Sequence[str], labels: Sequence[str],
          outputs: Optional[Sequence[str]] = None, columns: Optional[Mapping[str, Sequence]] = None,
          extra_metrics: Optional[Mapping] = None, breakdown: Optional[Breakdown] = None) -> dict:
    """Metrics and per-example records of one evaluated set (pure: nothing is written).

    `columns`: more per-example values for the records (e.g. the other mode's label, the label scores);
    `extra_metrics`: more numbers for the metrics (e.g. agreements, truncated prompts); `breakdown`: results per
    group of the rows' extra keys (`groups`), and the gap between the groups of `breakdown.gap` as a metric.
    """
    result = M.classification_metrics(gold, predicted, labels)
    result.update(extra_metrics or {})
    outputs = outputs if outputs is not None else predicted
    records = []
    for i, row in enumerate(rows):
        record = {"id": row.get("id", str(i + 1)), "text": row["input"], "gold": gold[i],
                  "raw_output": outputs[i], "predicted": predicted[i]}
        record.update({key: row[key] for key in extra_keys(row) if key not in record})
        record.update({name: values[i] for name, values in (columns or {}).items()})
        records.append(record)
    scored = {"metrics": result, "records": records,
              "report": M.classification_report_text(gold, predicted, labels),
              "confusion": M.confusion_counts(gold, predicted, labels)}
    tables = group_tables(records, breakdown_keys(rows, breakdown), breakdown.positive,
                          breakdown.min_size) if breakdown is not None else {}
    if tables:  # rows without group keys (a hand-made eval.data file) have no breakdown
        scored["groups"] = {"positive": breakdown.positive, "min_size": breakdown.min_size,
                            "not_groups": list(breakdown.not_groups), "breakdowns": tables}
        if breakdown.gap in tables:
            result["group_gap"] = {"breakdown": breakdown.gap, **extremes(tables[breakdown.gap], breakdown.not_groups)}
    return scored


def score_suite(suite: functional.Suite, task_predicted: Sequence[str], label_map: Mapping[str, str], min_size: int,
                outputs: Optional[Sequence[str]] = None, columns: Optional[Mapping[str, Sequence]] = None,
                extra_metrics: Optional[Mapping] = None) -> dict:
    """A system's results on a functional suite: `score` in the suite's labels (hateful / non-hateful, through
    task.functional_labels; each case's task label in `task_label`), broken down by functionality, target
    identity, direction and gold label, with the worst functionality and the target gap as metrics."""
    predicted = functional.as_suite_labels(task_predicted, label_map)
    spec = Breakdown(positive=functional.HATEFUL, min_size=min_size, gap=functional.TARGET,
                     keys=functional.EXTRA_KEYS, extra=("gold",))
    result = score(suite.rows, suite.gold, predicted, functional.LABELS, outputs=outputs,
                   columns={**(columns or {}), "task_label": list(task_predicted)}, extra_metrics=extra_metrics,
                   breakdown=spec)
    by_functionality = result["groups"]["breakdowns"][functional.FUNCTIONALITY]
    # over the functionalities of full size; when a (small, hand-made) suite has none, over all of them
    worst = extremes(by_functionality)
    if worst["worst_group"] is None:
        worst = extremes(by_functionality, include_small=True)
    result["metrics"]["worst_functionality"] = {"name": worst["worst_group"], "accuracy": worst["worst_accuracy"],
                                                "n": worst["worst_n"]}
    return result


def score_suite_replies(suite: functional.Suite, replies: Sequence[str], stop_message: str, min_size: int,
                        columns: Optional[Mapping[str, Sequence]] = None) -> dict:
    """A generation task's replies to a functional suite: `score_suite` with each reply's outcome (`stop` or
    `reply`, in `task_label`) as its label, a stop counting as hateful (functional.STOP_LABELS); `positive_rate` in
    every group is then the stop rate. Its metrics, in eval.json: n, functional_accuracy (stopped iff hateful),
    macro_f1, the stop rate overall and per gold label (on non-hateful cases: the over-refusal rate), the worst
    functionality (by functional accuracy, with its gold label and stop rate) and the target identities' gap."""
    outcomes = functional.stop_outcomes(replies, stop_message)
    scored = score_suite(suite, outcomes, functional.STOP_LABELS, min_size, outputs=list(replies), columns=columns)
    m, tables = scored["metrics"], scored["groups"]["breakdowns"]
    by_gold = tables["gold"]
    worst = m["worst_functionality"]
    if worst["name"] is not None:
        stats = tables[functional.FUNCTIONALITY][worst["name"]]
        worst = {**worst, "gold": functional.HATEFUL if stats["positive_gold"] else functional.NON_HATEFUL,
                 "stop_rate": stats["positive_rate"]}
    scored["metrics"] = {"n": m["n"], "functional_accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
                         "stop_rate": round(outcomes.count(functional.STOP) / len(outcomes), M.DIGITS),
                         **{f"stop_rate_{label.replace('-', '_')}": (by_gold.get(label) or {}).get("positive_rate")
                            for label in functional.LABELS},
                         "worst_functionality": worst, "target_gap": m.get("group_gap")}
    return scored


def confusion_csv(records: Sequence[Mapping]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    writer.writerows((r["gold"], r["predicted"]) for r in records)
    return buf.getvalue()


def write_results(base: Path, results: Mapping[str, dict], run_info: Mapping, title: str,
                  calibration: Optional[Mapping] = None) -> None:
    """`<base>.json` and the `<base>/` folder, each written atomically (complete or not at all); with a fitted
    `calibration` (hatetune.calibration.summarise) also its calibration.json and PR / reliability plots."""
    base = Path(base)
    with atomic_path(base) as tmp:
        tmp.mkdir(parents=True)
        for name, result in results.items():
            folder = tmp / name
            folder.mkdir()
            write_jsonl(folder / paths.PREDICTIONS_FILE, result["records"])
            (folder / paths.CONFUSION_FILE).write_text(confusion_csv(result["records"]), encoding="utf-8")
            (folder / "classification_report.txt").write_text(result["report"], encoding="utf-8")
            if result.get("groups"):
                write_json(folder / paths.GROUPS_FILE, result["groups"])
            names, counts = result["confusion"]
            plot_confusion(names, counts, folder / "confusion.png", f"{title} ({name})")
        write_json(tmp / "run.json", dict(run_info))
        if calibration is not None:
            write_json(paths.calibration_file(tmp), calibration["rule"])
            plot_pr_curves({name: (c["precision"], c["recall"]) for name, c in calibration["pr_curves"].items()},
                           tmp / paths.PR_CURVE_FILE, chosen=calibration["chosen_point"])
            plot_reliability(calibration["reliability"], tmp / paths.RELIABILITY_FILE)
    write_json(paths.results_json(base), {name: r["metrics"] for name, r in results.items()})


def summary_line(name: str, m: Mapping) -> str:
    line = (f"{name}: n={m['n']} accuracy={m['accuracy']:.4f} macro-F1={m['macro_f1']:.4f} "
            f"(with invalid: {m['macro_f1_with_invalid']:.4f}) invalid={m['invalid_rate']:.2%}")
    if "agreement_greedy_score" in m:
        line += f" greedy/score agreement={m['agreement_greedy_score']:.2%}"
    if m.get("truncated_prompts"):
        line += f" truncated prompts={m['truncated_prompts']}"
    return line
