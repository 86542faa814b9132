"""QLoRA fine-tuning: tokenisation with prompt masking, length-grouped dynamic batches, the Trainer, resume.

Prompts come from `hatetune.prompts` (the one place they are built), so a model is trained on exactly the text
it is later evaluated and served with. One run of `train` = one adapter in Hugging Face format; checkpoints go
to a folder that survives a killed run, and a rerun with the same settings continues from the last one.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from omegaconf import OmegaConf

from . import models
from .errors import HatetuneError
from .io import atomic_path, read_jsonl, sha256_file, write_json
from .prompts import build_completion, build_prompt

IGNORE_INDEX = -100  # label of tokens that do not count in the loss
REQUIRED_KEYS = ("instruction", "input", "output")
# The train stage's outputs (declared in dvc.yaml).
ADAPTER_ROOT = Path("models/adapter")
CHECKPOINT_ROOT = Path("models/checkpoints")
CURVES_DIR = Path("metrics/train_curves")
TRAIN_METRICS = Path("metrics/train.json")
RUN_FILE = "hatetune_run.json"  # fingerprint of the settings the checkpoints belong to
# Prompt tokens always kept at the end of an over-long prompt: the end of the user turn and the assistant header.
PROMPT_TAIL_TOKENS = 16
# The Trainer logs written as training curves (dvclive): train/eval loss, learning rate, gradient norm.
CURVES = ("loss", "eval_loss", "learning_rate", "grad_norm")


def adapter_dir(cfg) -> Path:
    """models/adapter/<task.name>: the trained LoRA adapter (+ tokenizer, chat template)."""
    return ADAPTER_ROOT / cfg.task.name


def checkpoint_dir(cfg) -> Path:
    """models/checkpoints/<task.name>: Trainer checkpoints, persisted across runs so a killed run resumes."""
    return CHECKPOINT_ROOT / cfg.task.name


def processed_dir(cfg) -> Path:
    return Path("data/processed") / cfg.task.name


# ------------------------------------------------------------------------------------------ tokenisation
def prompt_adds_special_tokens(prompt_cfg: Mapping[str, Any]) -> bool:
    """Whether the tokenizer should add its special tokens (BOS) to a prompt.

    A chat template already writes them (adding BOS again gives seed B's double BOS); a raw template
    (seed C) relies on the tokenizer's BOS, as the seed's trainer did. Evaluation must encode prompts the same way.
    """
    return prompt_cfg["format"] == "raw"


def encode_prompt(prompt: str, prompt_cfg: Mapping[str, Any], tokenizer) -> list[int]:
    """Token ids of a prompt built by `hatetune.prompts.build_prompt` (training and evaluation share this)."""
    return tokenizer(prompt, add_special_tokens=prompt_adds_special_tokens(prompt_cfg))["input_ids"]


def encode_example(row: Mapping[str, Any], prompt_cfg: Mapping[str, Any], tokenizer, cutoff_len: int,
                   loss_on: str = "completion") -> tuple[dict, bool]:
    """One Alpaca row -> {input_ids, labels} and whether it was truncated to `cutoff_len`.

    The answer (output + EOS) is kept whole; an over-long prompt loses tokens from its middle (the end of the
    post), so the system turn, the instruction and the assistant header survive. Labels are -100 on the
    prompt unless loss_on == "all".
    """
    prompt_ids = encode_prompt(build_prompt(row, prompt_cfg, tokenizer), prompt_cfg, tokenizer)
    answer_ids = tokenizer(build_completion(row, tokenizer.eos_token), add_special_tokens=False)["input_ids"]
    truncated = len(prompt_ids) + len(answer_ids) > cutoff_len
    if truncated:
        answer_ids = answer_ids[:cutoff_len]
        budget = cutoff_len - len(answer_ids)
        tail = min(PROMPT_TAIL_TOKENS, budget // 2)
        prompt_ids = prompt_ids[:budget - tail] + (prompt_ids[len(prompt_ids) - tail:] if tail else [])
    prompt_labels = list(prompt_ids) if loss_on == "all" else [IGNORE_INDEX] * len(prompt_ids)
    return {"input_ids": prompt_ids + answer_ids, "labels": prompt_labels + answer_ids}, truncated


def encode_rows(rows: Sequence[Mapping[str, Any]], prompt_cfg, tokenizer, cutoff_len: int, loss_on: str,
                source: str = "<rows>") -> tuple[list[dict], int]:
    """Encode every row (see `encode_example`); return the examples and how many were truncated.

    A row without instruction / input / output fails with the file, row (1-based line) and field.
    """
    examples, truncated = [], 0
    for i, row in enumerate(rows, start=1):
        for key in REQUIRED_KEYS:
            if not isinstance(row.get(key), str):
                raise HatetuneError("missing or not a string", file=source, row=i, field=key)
        if not row["output"]:
            raise HatetuneError("empty answer: nothing to learn", file=source, row=i, field="output")
        example, cut = encode_example(row, prompt_cfg, tokenizer, cutoff_len, loss_on)
        examples.append(example)
        truncated += cut
    return examples, truncated


class ListDataset:
    """A map-style dataset over a list of encoded examples (the Trainer reads lengths from input_ids)."""

    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]


class PaddingCollator:
    """Pads a batch to its longest example (dynamic padding), or to `pad_to` when given (for benchmarks).

    Left padding lines every answer up at the end of the batch, so with `trim_logits` the model computes logits
    (a vocab-wide matmul, the costliest single layer of a small model) only for the last `logits_to_keep`
    positions: from the token before the earliest answer to the end. Rotary position embeddings are relative,
    so the shifted positions of a left-padded row change nothing; evaluation pads left too.
    """

    def __init__(self, pad_token_id: int, pad_to: Optional[int] = None, trim_logits: bool = True):
        self.pad_token_id, self.pad_to, self.trim_logits = pad_token_id, pad_to, trim_logits

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(self.pad_to or 0, max(len(f["input_ids"]) for f in features))
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, width - n:] = torch.tensor(f["input_ids"])
            labels[i, width - n:] = torch.tensor(f["labels"])
            mask[i, width - n:] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if self.trim_logits:
            scored = (labels != IGNORE_INDEX).any(dim=0).nonzero()
            first = int(scored[0]) if len(scored) else width - 1
            batch["logits_to_keep"] = min(width, width - first + 1)
        return batch


def completion_loss(outputs, labels, num_items_in_batch=None):
    """Causal LM loss over the last `logits.shape[1]` positions (see PaddingCollator.trim_logits).

    Logit t predicts token t + 1. Summed and divided by `num_items_in_batch` (the scored tokens of the whole
    accumulated batch, as the Trainer counts them) when given, else the mean over this batch.
    """
    import torch.nn.functional as F

    logits = outputs["logits"]
    kept = logits.shape[1]
    targets = labels[:, labels.shape[1] - kept + 1:].to(logits.device)
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = (targets != IGNORE_INDEX).sum()
    if hasattr(num_items_in_batch, "to"):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


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

    from .config import lora_alpha

    targets = cfg.lora.target_modules
    targets = targets if isinstance(targets, str) else list(targets)
    return LoraConfig(r=cfg.lora.r, lora_alpha=lora_alpha(cfg), lora_dropout=cfg.lora.dropout,
                      bias=cfg.lora.bias, target_modules=targets, task_type="CAUSAL_LM")


def attach_lora(model, cfg):
    """Wrap `model` with fresh LoRA adapters per `cfg.lora` (seeded, so reruns start from the same weights)."""
    from peft import get_peft_model
    from transformers import set_seed

    set_seed(cfg.seed)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    if cfg.train.gradient_checkpointing:
        model.enable_input_require_grads()  # the frozen 4-bit base would otherwise cut the gradient path
    model.config.use_cache = False
    peft_model = get_peft_model(model, lora_config(cfg))
    models.disable_cpu_4bit_repack(peft_model)
    return peft_model


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def training_arguments(cfg, output_dir: str | Path, precision: str, has_eval: bool):
    """transformers 5.x TrainingArguments for `cfg.train`."""
    from transformers import TrainingArguments

    tr = cfg.train
    cpu = not on_gpu()
    eval_steps = tr.eval_steps or tr.save_steps
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
        eval_steps=eval_steps if has_eval else None,
        seed=cfg.seed,
        use_cpu=cpu,
        ddp_backend=("gloo" if cpu else "nccl") if world_size() > 1 else None,
        ddp_find_unused_parameters=False if world_size() > 1 else None,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        prediction_loss_only=True,  # the dev loss; never gather vocab-wide logits
        report_to="none",
        disable_tqdm=False,
    )


def run_fingerprint(cfg, data_files: Iterable[Path], base_dir: Path) -> str:
    """What the checkpoints of a run depend on: the settings that change training and the data / base model.

    A rerun resumes only from checkpoints with the same fingerprint; anything else starts fresh.
    """
    settings = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "lora", "train")}
    for volatile in ("logging_steps", "resume"):
        settings["train"].pop(volatile, None)
    settings.update(seed=cfg.seed, prompt=OmegaConf.to_container(cfg.task.prompt, resolve=True))
    settings["data"] = {Path(p).name: sha256_file(p) for p in data_files if Path(p).exists()}
    base_files = sorted(p for p in Path(base_dir).glob("*") if p.suffix in (".json", ".safetensors"))
    settings["base"] = {p.name: p.stat().st_size for p in base_files}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def last_complete_checkpoint(ckpt_dir: Path) -> Optional[str]:
    """The highest checkpoint-N that was fully written (the Trainer writes trainer_state.json last)."""
    done = [p for p in Path(ckpt_dir).glob("checkpoint-*")
            if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


def prepare_checkpoints(ckpt_dir: Path, fingerprint: str, resume: bool) -> Optional[str]:
    """The checkpoint to resume from, or None; clears checkpoints that belong to other settings."""
    run_file = ckpt_dir / RUN_FILE
    previous = json.loads(run_file.read_text()) if run_file.is_file() else {}
    last = last_complete_checkpoint(ckpt_dir)
    if last and resume and previous.get("fingerprint") == fingerprint:
        for partial in ckpt_dir.glob("checkpoint-*"):  # cut short by the kill
            if not (partial / "trainer_state.json").is_file():
                shutil.rmtree(partial, ignore_errors=True)
        return last
    if last:
        why = "train.resume is false" if not resume else "they were made with other settings or data"
        print(f"starting fresh: ignoring the checkpoints in {ckpt_dir} ({why})", flush=True)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_file, {"fingerprint": fingerprint})
    return None


def clear_checkpoints(ckpt_dir: Path) -> None:
    """After a successful run the adapter is saved: drop checkpoint-* (the fingerprint file stays)."""
    for sub in ckpt_dir.glob("checkpoint-*"):
        shutil.rmtree(sub, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ Trainer
def _callbacks(curves_dir: Optional[Path], resume: bool):
    from transformers import TrainerCallback
    from transformers.integrations import DVCLiveCallback
    from transformers.trainer_callback import ProgressCallback

    class StepLineProgress(ProgressCallback):
        """The progress bar, and one readable line per log step (instead of a raw dict)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            shown = {k: v for k, v in logs.items() if k in CURVES}
            if not shown:
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

    callbacks: list[TrainerCallback] = [StepLineProgress()]
    if curves_dir is not None and is_main_process():
        from dvclive import Live

        live = Live(str(curves_dir), resume=resume, dvcyaml=False, save_dvc_exp=False, report=None)
        callbacks.append(GlobalStepDVCLive(live=live))
    return callbacks


def make_trainer(model, tokenizer, args, train_set, eval_set=None, callbacks: Sequence = ()):
    """A Trainer that also counts the real (non-padding) and padded tokens of every training batch."""
    from transformers import Trainer
    from transformers.trainer_callback import ProgressCallback

    class CountingTrainer(Trainer):
        tokens = padded = examples = 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs["attention_mask"]
            self.tokens += int(mask.sum())
            self.padded += mask.numel()
            self.examples += mask.shape[0]
            return super().training_step(model, inputs, num_items_in_batch)

    trainer = CountingTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                              data_collator=PaddingCollator(tokenizer.pad_token_id),
                              compute_loss_func=completion_loss, processing_class=tokenizer,
                              callbacks=list(callbacks) or None)
    if any(isinstance(c, ProgressCallback) for c in callbacks):  # ours replaces the plain one (dict lines)
        for plain in [c for c in trainer.callback_handler.callbacks if type(c) is ProgressCallback]:
            trainer.remove_callback(plain)
    return trainer


def _all_reduce_sum(values: list[int]) -> list[int]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return [int(v) for v in t.tolist()]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def train(cfg, base_dir: str | Path, data_dir: str | Path, out_adapter: str | Path, ckpt_dir: str | Path,
          curves_dir: Optional[str | Path] = CURVES_DIR, metrics_path: Optional[str | Path] = TRAIN_METRICS) -> dict:
    """Fine-tune the base model in `base_dir` on `data_dir`/{train,dev}.jsonl; save the adapter; return metrics.

    Works the same in one process and under torchrun (rank 0 writes the outputs).
    """
    import torch

    base_dir, data_dir, ckpt_dir = Path(base_dir), Path(data_dir), Path(ckpt_dir)
    tr = cfg.train
    precision = resolve_precision(tr.precision)
    train_file, dev_file = data_dir / "train.jsonl", data_dir / "dev.jsonl"
    if not train_file.is_file():
        raise HatetuneError("training data not found: run the convert stage", file=str(train_file))

    tokenizer = models.load_tokenizer(base_dir, padding_side="right", trust_remote_code=cfg.model.trust_remote_code)
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

    fingerprint = run_fingerprint(cfg, [train_file, dev_file], base_dir)
    resume_from = None
    if is_main_process():
        resume_from = prepare_checkpoints(ckpt_dir, fingerprint, tr.resume)
    resume_from = _broadcast_from_rank0(resume_from)
    if resume_from:
        print(f"resuming from {resume_from}", flush=True)

    model = models.load_model(cfg.model, base_dir, quantize=True, trainable=True, dtype=load_dtype(cfg, precision))
    model = attach_lora(model, cfg)
    counts = models.model_summary(model)
    args = training_arguments(cfg, ckpt_dir, precision, has_eval=eval_set is not None)
    trainer = make_trainer(model, tokenizer, args, ListDataset(train_examples), eval_set,
                           callbacks=_callbacks(Path(curves_dir) if curves_dir else None, resume=bool(resume_from)))
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume_from)
    runtime = time.perf_counter() - started
    tokens, padded, examples = _all_reduce_sum([trainer.tokens, trainer.padded, trainer.examples])
    final_eval = {}
    if eval_set is not None:  # the dev loss at the last step (logged already if that step was an eval step)
        final_eval = next((h for h in trainer.state.log_history[::-1]
                           if "eval_loss" in h and h.get("step") == trainer.state.global_step), None) \
            or trainer.evaluate()

    resumed_step = int(Path(resume_from).name.split("-")[-1]) if resume_from else 0
    metrics = {
        "train_runtime_s": round(runtime, 2),  # the training loop, dev-loss evaluations and checkpoints included
        "examples": examples,
        "examples_per_s": round(examples / runtime, 3),
        "non_padding_tokens": tokens,
        "non_padding_tokens_per_s": round(tokens / runtime, 2),
        "non_padding_share": round(tokens / padded, 4) if padded else None,
        "peak_rss_mb": peak_rss_mb(),
        "trainable_params": counts["trainable_params"],
        "train_rows": len(train_examples),
        "truncated_examples": truncated,
        "cutoff_len": tr.cutoff_len,
        "global_step": trainer.state.global_step,
        "resumed_from_step": resumed_step,
        "epochs": round(trainer.state.epoch or 0, 3),
        "train_loss": round(result.training_loss, 4),
        "eval_loss": round(final_eval["eval_loss"], 4) if "eval_loss" in final_eval else None,
        "precision": precision,
        "world_size": world_size(),
        "torch_threads": torch.get_num_threads(),
    }
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        save_adapter(trainer.model, tokenizer, out_adapter)
        if metrics_path is not None:
            write_json(metrics_path, metrics)
        clear_checkpoints(ckpt_dir)
    trainer.accelerator.wait_for_everyone()
    return metrics


def _broadcast_from_rank0(value):
    """Under torchrun, rank 0 decides (e.g. which checkpoint to resume, after cleaning up); the others wait for
    it and get the same value."""
    if world_size() == 1:
        return value
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo" if not on_gpu() else "nccl")
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


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


# ---------------------------------------------------------------------------------------- multi-process
def torchrun_command(nproc: int, module: str, argv: Sequence[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone --nproc_per_node N -m <module> <argv>`.

    (Not `accelerate launch --cpu`, which silently runs one process.)
    """
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", module, *argv]


def launch_distributed(nproc: int, module: str, argv: Sequence[str]) -> int:
    """Run `module` in `nproc` processes; return the exit code (non-zero if any process failed)."""
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    return subprocess.call(torchrun_command(nproc, module, argv), env=env)


def is_distributed_worker() -> bool:
    """True inside a process started by torchrun."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


__all__ = ["adapter_dir", "checkpoint_dir", "processed_dir", "encode_prompt", "encode_example", "encode_rows",
           "prompt_adds_special_tokens", "PaddingCollator", "ListDataset", "resolve_precision", "lora_config",
           "attach_lora", "training_arguments", "make_trainer", "train", "save_adapter", "launch_distributed",
           "is_distributed_worker", "run_fingerprint", "prepare_checkpoints", "peak_rss_mb"]
