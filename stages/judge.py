"""judge: label every reply of a generation task (stophate) hateful or not, and score the judge itself.

The judge is the one the sources stage recorded in models/judge/<task>.source.json (hatetune.judge): the
classifier adapter of eval.judge.adapter_dir (by default the DynaHate task's) on this run's base model, through a
decision rule fitted on the DynaHate dev posts (eval.calibration, as the evaluate stage fits its own), or, when
there is none, the TF-IDF + logistic regression baseline trained on the DynaHate train posts. It is scored on the
DynaHate test posts (its own test macro-F1: DynaHate posts are the judge's own domain), then labels every distinct
reply that the evaluate and evaluate_zeroshot stages wrote (metrics/eval/, metrics/zeroshot/).

Writes metrics/judge.json ({"judge": which, its test scores; <system>: {<decoding>: {<set>: hateful-reply rate}}})
and metrics/judge/ (judged replies per system and decoding, the judge's test predictions); energy to
metrics/carbon/judge.json. A classification task has no replies: it writes "not applicable".
Changing the judge (eval.judge.*) reruns only this stage and the report, never the generation.
"""
from __future__ import annotations

import json
import sys

from hatetune import carbon, config, evaluation, generation, judge, model_sources, paths
from hatetune.errors import exit_on_error
from hatetune.io import atomic_path, write_json, write_jsonl

SYSTEM_RESULTS = (paths.EVAL, paths.ZEROSHOT)


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "judge", argv)
    task = cfg.task
    record_file = paths.judge_source_file(task.name)
    record = (json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file()
              else model_sources.resolve_judge(task.kind, cfg.eval.judge.adapter_dir, cfg.model))
    out = paths.results_base(paths.JUDGE)
    with carbon.track_emissions("judge", cfg.carbon.country_iso_code, paths.carbon_file("judge")):
        if task.kind != "generation":
            with atomic_path(out) as tmp:
                tmp.mkdir()
                write_json(tmp / "info.json", record)
            write_json(paths.results_json(out), {"judge": record})
            print(f"judge: not applicable ({record['reason']})", file=sys.stderr)
            return 0
        labels = list(task.labels.names)
        posts = {split: evaluation.load_rows(paths.judge_data_file(task.name, split), labels)
                 for split in ("train", "dev", "test")}
        test_rows, test_gold = posts["test"]
        the_judge = judge.load(record, cfg, paths.base_model_dir(cfg.model.name), posts["train"], posts["dev"])
        own = judge.own_test(the_judge, test_rows, test_gold, labels)
        replies = {}
        for name in SYSTEM_RESULTS:
            replies.update(generation.read_results(paths.results_base(name)))
        verdicts = judge.label_replies(the_judge, [task.stop_message] + [r["reply"] for d in replies.values()
                                                                      for rs in d.values() for r in rs])

    hate = cfg.eval.judge.hate_label
    m = own["metrics"]
    metrics = {"judge": {"kind": the_judge.kind, "name": the_judge.name, "fallback_reason": the_judge.reason or None,
                         "test_n": m["n"], "test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"],
                         "test_hate_precision": m["per_class"][hate]["precision"],
                         "test_hate_recall": m["per_class"][hate]["recall"],
                         "decision_rule": the_judge.rule, "replies_judged": len(verdicts),
                         # the judge on the stop message itself: a stop counts as not hateful either way
                         "stop_message_label": verdicts[task.stop_message]}}
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for system, decodings in replies.items():
            for decoding, records in decodings.items():
                flags = judge.hateful_flags(records, verdicts, hate)
                metrics.setdefault(system, {})[decoding] = judge.hateful_rates(records, flags,
                                                                               cfg.eval.generation.sets)
                write_jsonl(tmp / generation.slug(system) / decoding / "judged.jsonl",
                            [{"id": r["id"], "set": r["set"], "reply": r["reply"], "judge": verdicts[r["reply"]]}
                             for r in records])
        own_dir = tmp / paths.JUDGE_TEST
        write_jsonl(own_dir / paths.PREDICTIONS_FILE, own["records"])
        (own_dir / paths.CONFUSION_FILE).write_text(evaluation.confusion_csv(own["records"]), encoding="utf-8")
        (own_dir / "classification_report.txt").write_text(own["report"], encoding="utf-8")
        write_json(own_dir / "metrics.json", m)
        write_json(tmp / "info.json", record)
    write_json(paths.results_json(out), metrics)
    print(f"judge: {the_judge.name}: DynaHate test macro-F1 {m['macro_f1']:.4f} (n={m['n']}); "
          f"{len(verdicts)} distinct replies of {len(replies)} systems judged -> {paths.results_json(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
