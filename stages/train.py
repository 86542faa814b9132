"""train: QLoRA fine-tuning of the base model on the task's Alpaca JSONL.

Reads data/processed/<task>/{train,dev}.jsonl (a generation task: data/replies/<task>/{train,dev}.jsonl, its rows
with the outputs of task.targets.mode) and models/base/<model>/. Writes the adapter in Hugging Face
format (+ tokenizer, chat template) to models/adapter/<task>/, metrics/train.json (speed, memory, tokens,
truncation), metrics/train_run.json (the resolved config, library versions, CPU / GPU model, threads), training
curves to metrics/train_curves/ (dvclive) and energy to metrics/carbon/train.json.
Checkpoints go to models/checkpoints/<task>/ (kept across runs): a rerun after a killed run resumes from the
last one. train.nproc > 1 runs the same training in that many processes (torchrun; gloo on CPU).
"""
from __future__ import annotations

import sys

from hatetune import carbon, config, distributed, paths, training
from hatetune.errors import HatetuneError, exit_on_error


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "train", argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    task = cfg.task.name
    launcher = cfg.train.nproc > 1 and not distributed.is_distributed_worker()
    # One tracker for the whole stage: in the launcher when there are several processes, else here.
    with carbon.track_emissions("train", cfg.carbon.country_iso_code, paths.carbon_file("train"),
                                enabled=launcher or not distributed.is_distributed_worker()):
        if launcher:
            code = distributed.launch(cfg.train.nproc, "stages.train", argv)
            if code:
                raise HatetuneError(f"training failed in one of its {cfg.train.nproc} processes (exit {code})")
            return 0
        metrics = training.train(cfg, base_dir=paths.base_model_dir(cfg.model.name),
                                 data_dir=paths.training_data_dir(task, cfg.task.kind),
                                 out_adapter=paths.adapter_dir(task),
                                 ckpt_dir=paths.checkpoint_dir(task), curves_dir=paths.TRAIN_CURVES,
                                 metrics_path=paths.TRAIN_METRICS, run_path=paths.TRAIN_RUN)
    if distributed.is_main_process():
        print(f"adapter -> {paths.adapter_dir(task)}  ({metrics['global_step']} steps, "
              f"{metrics['train_runtime_s']} s, {metrics['non_padding_tokens_per_s']} tokens/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
