"""report: the fine-tuned vs zero-shot vs TF-IDF baseline table, the training summary, energy and emissions
per stage (codecarbon) + the Lacoste et al. estimate (from the carbon config), plots and the model card.

Reads metrics/{eval,zeroshot,baseline,train,data}.json, metrics/<system>/<split>/confusion.csv,
metrics/train_curves/ (dvclive), metrics/carbon/*.json and models/adapter/<task>/.
Writes metrics/report.md, metrics/report/{loss,per_class_f1,confusion}.png, metrics/carbon/total.json and
models/release/<task>/ = the adapter files + README.md (Hugging Face model card).
"""
from __future__ import annotations

import sys
from pathlib import Path

from hatetune import config, models, prompts, report, training
from hatetune.errors import HatetuneError, exit_on_error
from hatetune.io import write_json, write_text

RELEASE_ROOT = Path("models/release")


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, argv)
    facts = report.gather(cfg)
    if not any(facts["systems"].values()):
        raise HatetuneError("no evaluation results: run the evaluate, evaluate_zeroshot and baseline stages",
                            file="metrics/eval.json")
    plots = report.write_plots(facts, "metrics/report")
    write_json("metrics/carbon/total.json", {"measured": report.measured_totals(facts["measurements"]),
                                             "lacoste_estimate": facts["estimate"]})
    args = (cfg, facts["split"], facts["systems"], facts["train"], facts["measurements"], facts["estimate"],
            facts["data"])
    write_text("metrics/report.md", report.build_report(*args, plots=plots))

    adapter = training.adapter_dir(cfg)
    if not (adapter / "adapter_config.json").is_file():
        raise HatetuneError("no adapter to release: run the train stage", file=str(adapter))
    tokenizer = models.load_tokenizer(adapter, trust_remote_code=cfg.model.trust_remote_code)
    example = prompts.build_prompt({"instruction": cfg.task.prompt.instruction, "input": "<post>",
                                    "system": cfg.task.prompt.system}, cfg.task.prompt, tokenizer)
    # The card goes into a release copy, not into the adapter folder: that folder is the train stage's output,
    # and changing it would make DVC rerun training (see report.write_release).
    release = report.write_release(adapter, RELEASE_ROOT / cfg.task.name, report.model_card(*args, example))
    print(f"report -> metrics/report.md; model card -> {release / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
