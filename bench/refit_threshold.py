"""Re-fit the dev decision rule of finished evaluate runs under each `eval.calibration.objective`, from the label
log-likelihoods the evaluate stage stored, and score the test split with it: how much the threshold objective
alone changes a run's test macro-F1 and recalls, without retraining or re-scoring anything. Also each run's test
ROC AUC of the label margin (log P(hate) - log P(not hate)): how well it ranks posts, whatever the threshold.

It runs `hatetune.calibration.fit` / `apply` (the evaluate stage's code) on `metrics/eval/{dev,test}/predictions.jsonl`
of each workspace given (e.g. after `dvc exp apply <experiment>`). The stored log-likelihoods are rounded to 4
decimals, so the `macro_f1` row can differ from the stage's own figure by a few thousandths (a near-tie rounds
the other way); compare the objectives within a row.

Usage: python bench/refit_threshold.py <workspace> [<workspace> ...]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hatetune import calibration, metrics  # noqa: E402

LABELS = ["hate", "not hate"]
OBJECTIVES = ("macro_f1", "prevalence")


def load(workspace: Path, split: str):
    rows = [json.loads(line) for line in (workspace / "metrics/eval" / split / "predictions.jsonl").open()]
    return [[r["log_probs"][label] for label in LABELS] for r in rows], [r["gold"] for r in rows]


def main(workspaces) -> int:
    from sklearn.metrics import roc_auc_score

    print("| workspace | test ROC AUC of the label margin | objective | threshold P(hate) | test macro-F1 | "
          "test recall hate / not hate |")
    print("|---|---:|---|---:|---:|---|")
    for workspace in map(Path, workspaces):
        dev_scores, dev_gold = load(workspace, "dev")
        test_scores, test_gold = load(workspace, "test")
        auc = roc_auc_score([g == LABELS[0] for g in test_gold], [s[0] - s[1] for s in test_scores])
        for objective in OBJECTIVES:
            rule = calibration.fit(dev_scores, dev_gold, LABELS, None, objective)
            found = metrics.classification_metrics(test_gold, calibration.apply(rule, test_scores)[0], LABELS)
            recall = " / ".join(f"{found['per_class'][label]['recall']:.3f}" for label in LABELS)
            print(f"| {workspace.name} | {auc:.3f} | {objective} | {rule['threshold']:.4f} | {found['macro_f1']:.4f} | "
                  f"{recall} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
