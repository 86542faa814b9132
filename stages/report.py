"""report: the fine-tuned vs zero-shot vs TF-IDF baseline table, the training summary, energy and emissions
per stage (codecarbon) + the Lacoste et al. estimate (from the carbon config), plots and the model card.

Reads metrics/{eval,zeroshot,baseline,train,data}.json, metrics/<system>/<split>/confusion.csv,
metrics/train_curves/ (dvclive), metrics/carbon/*.json, the sources stage's records of the data and base
weights actually used, and models/adapter/<task>/.
Writes metrics/report.md, metrics/report/{loss,per_class_f1,confusion}.png, metrics/carbon/total.json and
models/release/<task>/ = the adapter files + README.md (Hugging Face model card).
"""
from __future__ import annotations

import sys

from hatetune import config, model_card, models, paths, prompts, report
from hatetune.errors import HatetuneError, exit_on_error
from hatetune.io import write_json, write_text


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "report", argv)
    facts = report.gather(cfg)
    if not any(facts["systems"].values()):
        raise HatetuneError("no evaluation results: run the evaluate, evaluate_zeroshot and baseline stages",
                            file=str(paths.results_json(paths.results_base(paths.EVAL))))
    plots = report.write_plots(facts, paths.REPORT_DIR) + facts["calibration_plots"]
    write_json(paths.CARBON_TOTAL, {"measured": report.measured_totals(facts["measurements"]),
                                    "lacoste_estimate": facts["estimate"]})
    write_text(paths.REPORT_MD, report.build_report(cfg, facts, plots))

    adapter = paths.adapter_dir(cfg.task.name)
    if not (adapter / "adapter_config.json").is_file():
        raise HatetuneError("no adapter to release: run the train stage", file=str(adapter))
    tokenizer = models.load_tokenizer(adapter, cfg.model)
    example = prompts.build_prompt({"instruction": cfg.task.prompt.instruction, "input": "<post>",
                                    "system": cfg.task.prompt.system}, cfg.task.prompt, tokenizer)
    # The card goes into a release copy, not into the adapter folder: that folder is the train stage's output,
    # and changing it would make DVC rerun training (see model_card.write_release).
    release = model_card.write_release(adapter, paths.release_dir(cfg.task.name),
                                       model_card.model_card(cfg, facts, example))
    print(f"report -> {paths.REPORT_MD}; model card -> {release / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
