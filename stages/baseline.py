"""baseline: TF-IDF + logistic regression, trained on data/processed/<task>/train.jsonl (the rows the LLM is
fine-tuned on) and scored on the same eval.splits as the evaluate stage, as context for every table.

Writes metrics/baseline.json and metrics/baseline/<split>/ (predictions.jsonl, confusion.csv/png,
classification_report.txt, groups.json: results per target group, type, round ...). Settings: eval.baseline
(ngram_max, min_df, c), seed. With eval.functional.enabled it scores the functional suite (HateCheck) too, as
evaluate does (metrics/baseline/<suite>/).

A generation task (stophate) trains it on its DynaHate train posts and scores it on its DynaHate test posts
(data/processed/<task>/judge_{train,test}.jsonl): the hate classifier that judges replies when no classifier
adapter is there, and its own test scores. It leaves such a task's functional suite to the evaluate stages, where
the four systems answer its cases.
"""
from __future__ import annotations

import sys

from hatetune import baseline, config, evaluation, functional, group_metrics, paths
from hatetune.errors import exit_on_error


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "baseline", argv)
    labels = list(cfg.task.labels.names)
    b = cfg.eval.baseline
    generation = cfg.task.kind == "generation"
    data_file = paths.judge_data_file if generation else paths.split_file
    train_rows, train_gold = evaluation.load_rows(data_file(cfg.task.name, "train"), labels)
    model = baseline.fit_tfidf_logreg([r["input"] for r in train_rows], train_gold, b.ngram_max, b.min_df, b.c,
                                      cfg.seed)
    groups = group_metrics.Breakdown(positive=labels[0], min_size=cfg.eval.min_group_size,
                                     gap=cfg.task.breakdowns.gap, not_groups=list(cfg.task.breakdowns.not_groups))
    results = {}
    for split in ["test"] if generation else cfg.eval.splits:
        rows, gold = evaluation.load_rows(data_file(cfg.task.name, split), labels)
        predicted = baseline.predict(model, [r["input"] for r in rows])
        results[split] = evaluation.score(rows, gold, predicted, labels, breakdown=groups)
        print(evaluation.summary_line(split, results[split]["metrics"]))
    if cfg.eval.functional.enabled and not generation:  # a generation task's suite is answered by its systems
        suite = functional.load(paths.FUNCTIONAL_DIR, cfg.eval.functional.source.name, cfg.task.functional_labels)
        predicted = baseline.predict(model, [r["input"] for r in suite.rows])
        results[suite.name] = evaluation.score_suite(suite, predicted, cfg.task.functional_labels,
                                                     cfg.eval.min_group_size)
        print(evaluation.summary_line(suite.name, results[suite.name]["metrics"]))
    evaluation.write_results(paths.results_base(paths.BASELINE), results, title="TF-IDF + LR",
                             run_info={"model": "tfidf+logreg", "train_rows": len(train_rows), **dict(b)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
