"""The QLoRA trainer: LoRA on a 4-bit base, transformers' Trainer with our collator, loss and callbacks.

Data come from `hatetune.sft_data` (prompts from `hatetune.prompts`, the one place they are built), checkpoints
from `hatetune.checkpoints`, processes from `hatetune.distributed`. One run of `train` = one adapter in Hugging
Face format + metrics/train.json + the run record (resolved config, versions, hardware).
"""
from __future__ import annotations

import json
import resource
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

from omegaconf import OmegaConf
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.integrations import DVCLiveCallback
from transformers.trainer_callback import ProgressCallback

from . import checkpoints, distributed, models
from .config import lora_alpha
from .errors import HatetuneError
from .io import atomic_path, read_jsonl, write_json
from .runinfo import environment
from .sft_data import ListDataset, PackedPrefixCollator, PaddingCollator, completion_loss, encode_rows

# The Trainer logs written as training curves (dvclive): train/eval loss, learning rate, gradient norm.
CURVES = ("loss", "eval_loss", "learning_rate", "grad_norm", "peak_rss_mb")


# -------------------------------------------------------------------------------------------- settings
def on_gpu() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_precision(requested: str) -> str:
    """The precision to train in: `requested`, or a warned fallback where the hardware lacks it.

    CPU: fp16 autocast is not supported -> bf16 (or fp32); bf16 needs avx512_bf16 / AMX to be worth it -> fp32
    otherwise. GPU: bf16 needs Ampere or newer -> fp16.
    """
    import torch

    if requested == "fp32":
        return requested
    if on_gpu():
        if requested == "bf16" and not torch.cuda.is_bf16_supported():
            warnings.warn("train.precision=bf16 is not supported on this GPU: training in fp16")
            return "fp16"
        return requested
    cpu_bf16 = torch.cpu._is_avx512_bf16_supported() or getattr(torch.cpu, "_is_amx_tile_supported", bool)()
    fallback = "bf16" if cpu_bf16 else "fp32"
    if requested == "fp16" or (requested == "bf16" and not cpu_bf16):
        warnings.warn(f"train.precision={requested} is not supported on this CPU: training in {fallback}")
        return fallback
    return requested


def load_dtype(cfg, precision: str) -> str:
    """dtype of the weights that are not quantized: the 4-bit compute dtype, or fp32 when training in fp32."""
    if precision == "fp32":
        return "float32"
    if cfg.model.quantization.load_in_4bit:
        return cfg.model.quantization.compute_dtype
    return {"bf16": "bfloat16", "fp16": "float16"}[precision]


def lora_config(cfg):
    """peft LoraConfig of `cfg.lora` (alpha null -> 2 x r)."""
    from peft import LoraConfig

    targets = cfg.lora.target_modules
    targets = targets if isinstance(targets, str) else list(targets)
    return LoraConfig(r=cfg.lora.r, lora_alpha=lora_alpha(cfg), lora_dropout=cfg.lora.dropout,
                      bias=cfg.lora.bias, target_modules=targets, task_type="CAUSAL_LM")


def training_seed(cfg) -> int:
    """The seed of LoRA initialisation and batch order: `train.seed`, or the top-level `seed` when unset."""
    return cfg.seed if cfg.train.seed is None else cfg.train.seed


def attach_lora(model, cfg):
    """Wrap `model` with fresh LoRA adapters per `cfg.lora` (seeded, so reruns start from the same weights)."""
    from peft import get_peft_model
    from transformers import set_seed

    set_seed(training_seed(cfg))
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    if cfg.train.gradient_checkpointing:
        model.enable_input_require_grads()  # the frozen 4-bit base would otherwise cut the gradient path
    model.config.use_cache = False
    peft_model = get_peft_model(model, lora_config(cfg))
    models.disable_cpu_4bit_repack(peft_model)
    return peft_model


def training_arguments(cfg, output_dir: str | Path, precision: str, has_eval: bool) -> TrainingArguments:
    """transformers 5.x TrainingArguments for `cfg.train`."""
    tr = cfg.train
    cpu = not on_gpu()
    several = distributed.world_size() > 1
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=tr.batch_size,
        per_device_eval_batch_size=tr.batch_size,
        gradient_accumulation_steps=tr.grad_accum,
        learning_rate=tr.lr,
        lr_scheduler_type=tr.scheduler,
        warmup_steps=tr.warmup_steps if tr.warmup_steps else float(tr.warmup_ratio),  # a float < 1 is a ratio
        num_train_epochs=tr.epochs,
        max_steps=tr.max_steps if tr.max_steps is not None else -1,
        optim=tr.optimizer,
        weight_decay=tr.weight_decay,
        max_grad_norm=tr.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=tr.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if tr.gradient_checkpointing else None,
        train_sampling_strategy="group_by_length" if tr.group_by_length else "random",
        logging_strategy="steps",
        logging_steps=tr.logging_steps,
        save_strategy="steps",
        save_steps=tr.save_steps,
        save_total_limit=tr.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(tr.eval_steps or tr.save_steps) if has_eval else None,
        seed=training_seed(cfg),
        use_cpu=cpu,
        ddp_backend=("gloo" if cpu else "nccl") if several else None,
        ddp_find_unused_parameters=False if several else None,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        prediction_loss_only=True,  # the dev loss; never gather vocab-wide logits
        report_to="none",
        disable_tqdm=False,
    )


# ------------------------------------------------------------------------------------------ the Trainer
class PeakMemory(TrainerCallback):
    """Adds the process's peak RSS so far to every log (train and dev-loss steps): the curve shows which phase
    (loading, training steps, the first dev-loss pass, a checkpoint save) raises the stage's peak memory."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            logs["peak_rss_mb"] = peak_rss_mb()


class StepLineProgress(ProgressCallback):
    """The progress bar, and one readable line per log step (instead of a raw dict)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        shown = {k: v for k, v in logs.items() if k in CURVES}
        if not shown.keys() - {"peak_rss_mb"}:  # the end-of-training summary carries only PeakMemory's value
            return
        text = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
        line = f"step {state.global_step}/{state.max_steps}  epoch {state.epoch or 0:.2f}  {text}"
        (self.training_bar.write if self.training_bar is not None else print)(line)


class GlobalStepDVCLive(DVCLiveCallback):
    """dvclive's step would count log calls; pin it to the optimizer step so train and eval curves align."""

    def on_log(self, args, state, control, model=None, logs=None, **kwargs):
        if state.is_world_process_zero and self.live is not None:
            self.live.step = state.global_step
        logs = {k: v for k, v in (logs or {}).items() if k in CURVES}
        if logs:
            super().on_log(args, state, control, model=model, logs=logs, **kwargs)

    def setup(self, args, state, model):  # the full TrainingArguments dump is noise next to params.yaml
        self._initialized = True


def batch_counts(inputs) -> tuple[int, int, int]:
    """(tokens of the rows, token positions computed, rows) of a training batch: padded or packed.

    A packed batch (PackedPrefixCollator) is one row whose position ids restart after the shared prefix for
    every row: P positions of prefix, then each row's own tokens; it computes fewer positions than its rows hold.
    """
    import torch

    mask = inputs["attention_mask"]
    if mask.dim() == 2:
        return int(mask.sum()), mask.numel(), mask.shape[0]
    per_position = torch.bincount(inputs["position_ids"][0])  # prefix positions once, P (a row's start) per row
    rows = int(per_position.max())
    prefix = int(torch.nonzero(per_position == rows)[0])
    computed = int(per_position.sum())
    return prefix * rows + computed - prefix, computed, rows


class CountingTrainer(Trainer):
    """A Trainer that also counts the rows' real (non-padding) tokens, the token positions it computes and the
    examples it trains on (tokens / computed positions is above 1 when a shared prefix is packed)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokens = self.padded = self.examples = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        tokens, computed, rows = batch_counts(inputs)
        self.tokens += tokens
        self.padded += computed
        self.examples += rows
        return super().training_step(model, inputs, num_items_in_batch)


def make_callbacks(curves_dir: Optional[Path], resume: bool) -> list[TrainerCallback]:
    callbacks: list[TrainerCallback] = [PeakMemory(), StepLineProgress()]  # PeakMemory first: the others log it
    if curves_dir is not None and distributed.is_main_process():
        from dvclive import Live

        live = Live(str(curves_dir), resume=resume, dvcyaml=False, save_dvc_exp=False, report=None)
        callbacks.append(GlobalStepDVCLive(live=live))
    return callbacks


def make_trainer(model, tokenizer, args, train_set, eval_set=None, callbacks: Sequence = (),
                 packing: str = "none") -> CountingTrainer:
    collator = (PackedPrefixCollator(tokenizer.pad_token_id) if packing == "shared_prefix"
                else PaddingCollator(tokenizer.pad_token_id))
    trainer = CountingTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                              data_collator=collator,
                              compute_loss_func=completion_loss, processing_class=tokenizer,
                              callbacks=list(callbacks) or None)
    if any(isinstance(c, StepLineProgress) for c in callbacks):  # ours replaces the plain one (dict lines)
        for plain in [c for c in trainer.callback_handler.callbacks if type(c) is ProgressCallback]:
            trainer.remove_callback(plain)
    return trainer


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# ------------------------------------------------------------------------------------------------ train
def train(cfg, base_dir: str | Path, data_dir: str | Path, out_adapter: str | Path, ckpt_dir: str | Path,
          curves_dir: Optional[str | Path] = None, metrics_path: Optional[str | Path] = None,
          run_path: Optional[str | Path] = None) -> dict:
    """Fine-tune the base model in `base_dir` on `data_dir`/{train,dev}.jsonl; save the adapter; return metrics.

    Works the same in one process and under torchrun (rank 0 writes the outputs). `run_path`: where to record
    the resolved config, library versions, CPU / GPU model and thread count of the run.
    """
    base_dir, data_dir, ckpt_dir = Path(base_dir), Path(data_dir), Path(ckpt_dir)
    tr = cfg.train
    precision = resolve_precision(tr.precision)
    train_file, dev_file = data_dir / "train.jsonl", data_dir / "dev.jsonl"
    if not train_file.is_file():
        raise HatetuneError("training data not found: run the convert stage", file=str(train_file))

    tokenizer = models.load_tokenizer(base_dir, cfg.model, padding_side="right")
    train_examples, truncated = encode_rows(read_jsonl(train_file), cfg.task.prompt, tokenizer, tr.cutoff_len,
                                            tr.loss_on, source=str(train_file))
    if not train_examples:
        raise HatetuneError("no training rows", file=str(train_file))
    eval_set = None
    if dev_file.is_file():
        dev_rows = read_jsonl(dev_file)[:tr.eval_examples] if tr.eval_examples else read_jsonl(dev_file)
        if dev_rows:
            eval_set = ListDataset(encode_rows(dev_rows, cfg.task.prompt, tokenizer, tr.cutoff_len, tr.loss_on,
                                               source=str(dev_file))[0])

    fingerprint = checkpoints.run_fingerprint(cfg, [train_file, dev_file], base_dir)
    resume_from = None
    if distributed.is_main_process():
        resume_from = checkpoints.prepare_checkpoints(ckpt_dir, fingerprint, tr.resume)
    resume_from = distributed.broadcast_from_rank0(resume_from)
    if resume_from:
        print(f"resuming from {resume_from}", flush=True)

    model = models.load_model(cfg.model, base_dir, quantize=True, trainable=True, dtype=load_dtype(cfg, precision))
    model = attach_lora(model, cfg)
    if tr.packing == "shared_prefix" and model.config._attn_implementation != "sdpa":
        raise HatetuneError(f"shared-prefix packing needs sdpa attention, the model uses "
                            f"{model.config._attn_implementation}", field="train.packing")
    counts = models.model_summary(model)
    args = training_arguments(cfg, ckpt_dir, precision, has_eval=eval_set is not None)
    trainer = make_trainer(model, tokenizer, args, ListDataset(train_examples), eval_set,
                           callbacks=make_callbacks(Path(curves_dir) if curves_dir else None, bool(resume_from)),
                           packing=tr.packing)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    runtime = time.perf_counter() - started
    tokens, padded, examples = distributed.all_reduce_sum([trainer.tokens, trainer.padded, trainer.examples])
    final_eval = {}
    if eval_set is not None:  # the dev loss at the last step (logged already if that step was an eval step)
        final_eval = next((h for h in trainer.state.log_history[::-1]
                           if "eval_loss" in h and h.get("step") == trainer.state.global_step), None) \
            or trainer.evaluate()

    metrics = {
        "train_runtime_s": round(runtime, 2),  # the training loop, dev-loss evaluations and checkpoints included
        "examples": examples,
        "examples_per_s": round(examples / runtime, 3),
        "non_padding_tokens": tokens,
        "non_padding_tokens_per_s": round(tokens / runtime, 2),
        "computed_positions": padded,
        # < 1: padding computed; > 1: a packed shared prefix computed once for several rows
        "tokens_per_computed_position": round(tokens / padded, 4) if padded else None,
        "peak_rss_mb": peak_rss_mb(),
        "trainable_params": counts["trainable_params"],
        "train_rows": len(train_examples),
        "truncated_examples": truncated,
        "cutoff_len": tr.cutoff_len,
        "global_step": trainer.state.global_step,
        "resumed_from_step": checkpoints.step_of(resume_from) if resume_from else 0,
        "epochs": round(trainer.state.epoch or 0, 3),
        "train_loss": round(result.training_loss, 4),
        "eval_loss": round(final_eval["eval_loss"], 4) if "eval_loss" in final_eval else None,
        "precision": precision,
        "world_size": distributed.world_size(),
    }
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        save_adapter(trainer.model, tokenizer, out_adapter)
        if metrics_path is not None:
            write_json(metrics_path, metrics)
        if run_path is not None:
            write_json(run_path, {"config": OmegaConf.to_container(cfg, resolve=True), **environment()})
        checkpoints.clear_checkpoints(ckpt_dir)
    trainer.accelerator.wait_for_everyone()
    return metrics


def save_adapter(model, tokenizer, out_dir: str | Path) -> Path:
    """The adapter in Hugging Face format (adapter_config.json, adapter_model.safetensors) + tokenizer and chat
    template, written atomically; `PeftModel.from_pretrained(base, out_dir)` loads it."""
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # peft writes target_modules from a set, in hash order: sort it so reruns are byte-identical
        config_file = tmp / "adapter_config.json"
        adapter_config = json.loads(config_file.read_text(encoding="utf-8"))
        if isinstance(adapter_config.get("target_modules"), list):
            adapter_config["target_modules"] = sorted(adapter_config["target_modules"])
        write_json(config_file, adapter_config)
    return Path(out_dir)
