"""hatetune.training: tokenisation with prompt masking, truncation, padding and the loss window, Trainer settings,
checkpoint fingerprints, and real tiny training runs (in-process, killed-and-resumed, and with 2 processes)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from hatetune import config, models, training
from hatetune.errors import HatetuneError
from hatetune.prompts import build_prompt

ROOT = Path(__file__).resolve().parents[1]

INSTRUCTION = "You are a helpful Assistant. Your task is to classify the social media post as hate or not hate. Post:"
SYSTEM = "Strictly respond only with the label: 'hate' or 'not hate'."
WORDS = "people they them those we our neighbourhood love respect women men immigrants muslims jews".split()


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """Learnable toy rows: the label is given away by the first word of the post."""
    import random

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        hate = i % 2 == 0
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 20)))
        rows.append({"instruction": INSTRUCTION, "input": f"{'hate' if hate else 'love'} {words}",
                     "output": "hate" if hate else "not hate", "system": SYSTEM, "id": str(i)})
    return rows


def write_processed(folder: Path, n_train: int = 32, n_dev: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("dev", n_dev, 1), ("test", n_dev, 2)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for row in make_rows(n, seed):
                f.write(json.dumps(row) + "\n")
    return folder


@pytest.fixture
def cfg(tiny_model_dir):
    return config.load([f"model.path={tiny_model_dir}"], ROOT / "params.yaml")


@pytest.fixture
def tok(tiny_model_dir):
    return models.load_tokenizer(tiny_model_dir, "right")


# ------------------------------------------------------------------------------------------ tokenisation
def test_loss_only_on_the_answer_and_eos(cfg, tok):
    row = make_rows(1)[0]
    example, truncated = training.encode_example(row, cfg.task.prompt, tok, 256, "completion")
    prompt_ids = tok(build_prompt(row, cfg.task.prompt, tok), add_special_tokens=False)["input_ids"]
    answer_ids = tok("hate" + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert not truncated
    assert example["input_ids"] == prompt_ids + answer_ids
    assert example["labels"] == [-100] * len(prompt_ids) + answer_ids
    assert example["labels"][-1] == tok.eos_token_id


def test_loss_on_all_scores_the_prompt_too(cfg, tok):
    example, _ = training.encode_example(make_rows(1)[0], cfg.task.prompt, tok, 256, "all")
    assert example["labels"] == example["input_ids"]


def test_raw_template_prompt_is_the_seed_c_text(tok):
    cfg = config.load(["task=mhs"])
    row = {"instruction": cfg.task.prompt.instruction, "input": "some text", "output": "Hate", "system": ""}
    example, _ = training.encode_example(row, cfg.task.prompt, tok, 256, "all")
    text = tok.decode(example["input_ids"])
    assert text == ("[INST] ### Instruction: " + cfg.task.prompt.instruction + " \n### Text: some text \n"
                    "### Answer: [/INST] Hate" + tok.eos_token)
    assert training.prompt_adds_special_tokens(cfg.task.prompt)


def test_truncation_keeps_the_answer_and_the_assistant_header(cfg, tok):
    rows = make_rows(4)
    cutoff = max(len(e["input_ids"]) for e in training.encode_rows(rows, cfg.task.prompt, tok, 10_000,
                                                                    "completion")[0])
    row = make_rows(1)[0]
    row["input"] = " ".join(["people"] * 300)
    example, truncated = training.encode_example(row, cfg.task.prompt, tok, cutoff, "completion")
    assert truncated and len(example["input_ids"]) == cutoff
    text = tok.decode(example["input_ids"])
    assert text.startswith("<|im_start|>system\n" + SYSTEM)
    assert text.endswith("<|im_start|>assistant\nhate<|im_end|>")
    _, n_truncated = training.encode_rows(rows + [row], cfg.task.prompt, tok, cutoff, "completion")
    assert n_truncated == 1


@pytest.mark.parametrize("field, value", [("output", None), ("input", 3), ("output", "")])
def test_bad_row_names_file_row_and_field(cfg, tok, field, value):
    rows = make_rows(3)
    rows[1][field] = value
    with pytest.raises(HatetuneError) as err:
        training.encode_rows(rows, cfg.task.prompt, tok, 256, "completion", source="train.jsonl")
    assert (err.value.file, err.value.row, err.value.field) == ("train.jsonl", 2, field)


# -------------------------------------------------------------------------------------- padding and loss
def test_collator_pads_left_to_the_longest_and_keeps_only_the_answer_logits():
    features = [{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]},
                {"input_ids": [5, 6], "labels": [-100, 6]}]
    batch = training.PaddingCollator(pad_token_id=0)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [0, 0, 5, 6]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, -100, -100, 6]]
    assert batch["logits_to_keep"] == 3  # the token before the first answer token, to the end
    fixed = training.PaddingCollator(pad_token_id=0, pad_to=6, trim_logits=False)(features)
    assert fixed["input_ids"].shape == (2, 6) and "logits_to_keep" not in fixed


def test_trimmed_loss_equals_the_full_causal_lm_loss(cfg, tok, tiny_model_dir):
    model = models.load_model(cfg.model, tiny_model_dir, quantize=False, dtype="float32")
    for loss_on in ("completion", "all"):
        examples, _ = training.encode_rows(make_rows(5), cfg.task.prompt, tok, 256, loss_on)
        batch = training.PaddingCollator(tok.pad_token_id)(examples)
        labels, keep = batch.pop("labels"), batch.pop("logits_to_keep")
        with torch.no_grad():
            fast = training.completion_loss(model(**batch, logits_to_keep=keep), labels)
            total, count = 0.0, 0
            for e in examples:  # each example alone, unpadded, full logits
                logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
                target = torch.tensor(e["labels"][1:])
                total += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
                count += int((target != -100).sum())
        assert float(fast) == pytest.approx(float(total / count), rel=1e-4)


# ---------------------------------------------------------------------------------------------- settings
def test_precision_falls_back_on_cpu_with_a_warning(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    with pytest.warns(UserWarning, match="fp16 is not supported"):
        assert training.resolve_precision("fp16") == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert training.resolve_precision("bf16") == "bf16"
        assert training.resolve_precision("fp32") == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    with pytest.warns(UserWarning, match="bf16 is not supported"):
        assert training.resolve_precision("bf16") == "fp32"


def test_training_arguments_follow_the_config(cfg, tmp_path):
    args = training.training_arguments(cfg, tmp_path, "bf16", has_eval=True)
    tr = cfg.train
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (tr.batch_size, tr.grad_accum)
    assert args.learning_rate == tr.lr and args.lr_scheduler_type == tr.scheduler
    assert args.warmup_steps == tr.warmup_ratio and 0 < args.warmup_steps < 1  # a ratio
    assert args.train_sampling_strategy == "group_by_length" and args.bf16 and not args.fp16
    assert args.report_to == [] or args.report_to == "none" or args.report_to is None
    assert args.eval_strategy == "steps" and args.eval_steps == (tr.eval_steps or tr.save_steps)
    cfg.train.warmup_ratio, cfg.train.warmup_steps, cfg.train.max_steps = 0.0, 5, 1000
    cfg.train.optimizer, cfg.train.group_by_length = "paged_adamw_8bit", False
    args = training.training_arguments(cfg, tmp_path, "fp32", has_eval=False)
    assert args.warmup_steps == 5 and args.max_steps == 1000 and args.optim == "paged_adamw_8bit"
    assert args.train_sampling_strategy == "random" and not args.bf16 and args.eval_strategy == "no"


def test_lora_alpha_defaults_to_twice_r_and_targets_pass_through(cfg):
    cfg.lora.r = 32
    assert training.lora_config(cfg).lora_alpha == 64
    cfg.lora.alpha, cfg.lora.target_modules, cfg.lora.bias = 16, ["q_proj", "lm_head"], "lora_only"
    lc = training.lora_config(cfg)
    assert (lc.r, lc.lora_alpha, lc.bias, set(lc.target_modules)) == (32, 16, "lora_only", {"q_proj", "lm_head"})


def test_checkpoints_of_other_settings_are_not_resumed(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    assert training.prepare_checkpoints(ckpt, "aaa", resume=True) is None
    for step in (2, 4):
        (ckpt / f"checkpoint-{step}").mkdir()
        (ckpt / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (ckpt / "checkpoint-6").mkdir()  # cut short by a kill: no trainer_state.json
    assert training.prepare_checkpoints(ckpt, "aaa", resume=True) == str(ckpt / "checkpoint-4")
    assert not (ckpt / "checkpoint-6").exists()
    assert training.prepare_checkpoints(ckpt, "aaa", resume=False) is None
    assert not list(ckpt.glob("checkpoint-*"))
    (ckpt / "checkpoint-2").mkdir()
    (ckpt / "checkpoint-2" / "trainer_state.json").write_text("{}")
    assert training.prepare_checkpoints(ckpt, "bbb", resume=True) is None
    assert "other settings" in capsys.readouterr().out


def test_fingerprint_changes_with_settings_and_data_but_not_logging(cfg, tmp_path, tiny_model_dir):
    data = write_processed(tmp_path / "data")
    files = [data / "train.jsonl", data / "dev.jsonl"]
    first = training.run_fingerprint(cfg, files, tiny_model_dir)
    cfg.train.logging_steps = 99
    assert training.run_fingerprint(cfg, files, tiny_model_dir) == first
    cfg.lora.r = 16
    assert training.run_fingerprint(cfg, files, tiny_model_dir) != first
    cfg.lora.r = 8
    (data / "train.jsonl").write_text((data / "train.jsonl").read_text()[:-200] + "\n")
    assert training.run_fingerprint(cfg, files, tiny_model_dir) != first


# ----------------------------------------------------------------------------------- real training runs
def test_tiny_training_run_learns_and_saves_a_loadable_adapter(cfg, tiny_model_dir, tmp_path):
    from peft import PeftModel

    data = write_processed(tmp_path / "data", n_train=48, n_dev=8)
    cfg.train.lr, cfg.train.epochs, cfg.train.batch_size, cfg.train.save_steps = 5e-3, 2.0, 8, 100
    cfg.train.eval_steps = 4
    metrics = training.train(cfg, tiny_model_dir, data, tmp_path / "adapter", tmp_path / "ckpt",
                             curves_dir=tmp_path / "curves", metrics_path=tmp_path / "train.json")
    assert json.loads((tmp_path / "train.json").read_text()) == metrics
    assert metrics["global_step"] == 12 and metrics["examples"] == 96 and metrics["train_rows"] == 48
    assert metrics["trainable_params"] > 0 and metrics["truncated_examples"] == 0
    assert 0 < metrics["non_padding_share"] <= 1 and metrics["non_padding_tokens_per_s"] > 0
    assert metrics["peak_rss_mb"] > 0 and metrics["resumed_from_step"] == 0
    # the loss went down, and the curves (per optimizer step) say so
    losses = [float(line.split("\t")[1]) for line in
              (tmp_path / "curves/plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    eval_losses = (tmp_path / "curves/plots/metrics/eval/loss.tsv").read_text().splitlines()
    assert losses[-1] < losses[0] and metrics["eval_loss"] < losses[0]
    assert [line.split("\t")[0] for line in eval_losses[1:]] == ["4", "8", "12"]
    assert (tmp_path / "curves/plots/metrics/learning_rate.tsv").is_file()
    assert (tmp_path / "curves/plots/metrics/grad_norm.tsv").is_file()
    # checkpoints are gone after success; the adapter is a standard PEFT folder
    assert not list((tmp_path / "ckpt").glob("checkpoint-*"))
    adapter = tmp_path / "adapter"
    assert {"adapter_config.json", "adapter_model.safetensors", "chat_template.jinja"} <= \
        {p.name for p in adapter.iterdir()}
    base = models.load_model(cfg.model, tiny_model_dir)
    model = PeftModel.from_pretrained(base, str(adapter))
    tok = models.load_tokenizer(adapter)
    row = make_rows(2, seed=5)[1]
    ids = training.encode_prompt(build_prompt(row, cfg.task.prompt, tok), cfg.task.prompt, tok)
    out = model.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > len(ids)


def test_reruns_give_byte_identical_adapters(cfg, tiny_model_dir, tmp_path):
    data = write_processed(tmp_path / "data", n_train=16, n_dev=4)
    cfg.train.max_steps, cfg.train.batch_size = 3, 4
    digests = []
    for run in ("a", "b"):
        training.train(cfg, tiny_model_dir, data, tmp_path / run, tmp_path / f"ckpt-{run}", curves_dir=None,
                       metrics_path=None)
        digests.append({p.name: p.read_bytes() for p in sorted((tmp_path / run).iterdir())})
    assert digests[0] == digests[1]
    config_json = json.loads(digests[0]["adapter_config.json"])
    assert config_json["target_modules"] == sorted(config_json["target_modules"])


@pytest.mark.parametrize("preset", ["stophate_llama2_13b", "mhs_mistral7b", "dynahate_llama31_8b"])
def test_preset_training_settings_run_on_the_tiny_model(preset, tiny_model_dir, tmp_path):
    """Each seed's training side (optimizer, precision fallback, warmup, lm_head target, bias, loss_on, gradient
    checkpointing) runs end to end; only model, data and step count are shrunk."""
    cfg = config.validate(config.compose([f"+experiment={preset}", f"model.path={tiny_model_dir}",
                                          "train.max_steps=2", "train.batch_size=2", "train.grad_accum=1",
                                          "train.cutoff_len=128", "train.eval_examples=2"]))
    data = write_processed(tmp_path / "data", n_train=8, n_dev=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = training.train(cfg, tiny_model_dir, data, tmp_path / "adapter", tmp_path / "ckpt",
                                 curves_dir=None, metrics_path=None)
    assert metrics["global_step"] == 2 and metrics["trainable_params"] > 0
    if cfg.train.precision == "fp16":  # no fp16 autocast on a CPU
        assert metrics["precision"] in ("bf16", "fp32")
        assert any("fp16 is not supported" in str(w.message) for w in caught)
    saved = json.loads((tmp_path / "adapter/adapter_config.json").read_text())
    assert saved["r"] == cfg.lora.r and saved["lora_alpha"] == config.lora_alpha(cfg)
    assert saved["bias"] == cfg.lora.bias
    if "lm_head" in cfg.lora.target_modules:
        assert "lm_head" in saved["target_modules"]


def _stage_cmd(tmp_path, tiny_model_dir, *overrides):
    return [sys.executable, "-m", "stages.train", f"model.path={tiny_model_dir}", *overrides]


@pytest.fixture
def stage_dir(tmp_path, tiny_model_dir):
    """A working directory laid out like the project: params.yaml, base model pointer, processed data."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    write_processed(tmp_path / "data/processed/dynahate", n_train=64, n_dev=8)
    cfg = config.load([f"model.path={tiny_model_dir}"], tmp_path / "params.yaml")
    models.prepare_base_model(cfg, tmp_path / models.base_model_dir(cfg))
    return tmp_path


def _env(tmp_path):
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_killed_run_resumes_from_its_last_checkpoint(stage_dir, tiny_model_dir):
    overrides = ["train.max_steps=40", "train.save_steps=2", "train.batch_size=2", "train.eval_examples=2"]
    cmd = _stage_cmd(stage_dir, tiny_model_dir, *overrides)
    ckpt = stage_dir / "models/checkpoints/dynahate"
    proc = subprocess.Popen(cmd, cwd=stage_dir, env=_env(stage_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and training.last_complete_checkpoint(ckpt) is None and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = training.last_complete_checkpoint(ckpt)
    assert killed_at is not None, "no checkpoint before the kill"
    step = int(killed_at.rsplit("-", 1)[1])
    assert step < 40 and not (stage_dir / "metrics/train.json").exists()
    assert not (stage_dir / "models/adapter/dynahate").exists()  # nothing half-written

    rerun = subprocess.run(cmd, cwd=stage_dir, env=_env(stage_dir), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stdout
    metrics = json.loads((stage_dir / "metrics/train.json").read_text())
    assert metrics["resumed_from_step"] >= step and metrics["global_step"] == 40
    assert metrics["examples"] == (40 - metrics["resumed_from_step"]) * 2  # only the remaining steps ran
    assert (stage_dir / "models/adapter/dynahate/adapter_model.safetensors").is_file()
    assert json.loads((stage_dir / "metrics/carbon/train.json").read_text())["energy_kwh"] > 0


def test_two_processes_train_with_torchrun_on_cpu(stage_dir, tiny_model_dir):
    cmd = _stage_cmd(stage_dir, tiny_model_dir, "train.nproc=2", "train.max_steps=4", "train.batch_size=2",
                     "train.logging_steps=1", "train.eval_examples=2")
    proc = subprocess.run(cmd, cwd=stage_dir, env=_env(stage_dir), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((stage_dir / "metrics/train.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 4
    assert metrics["examples"] == 4 * 2 * 2  # steps x per-device batch x processes
    assert (stage_dir / "models/adapter/dynahate/adapter_model.safetensors").is_file()
    carbon = json.loads((stage_dir / "metrics/carbon/train.json").read_text())
    assert carbon["stage"] == "train" and carbon["duration_s"] > 0


def test_stage_fails_in_one_line_on_a_bad_row_and_writes_nothing(stage_dir, tiny_model_dir):
    train_file = stage_dir / "data/processed/dynahate/train.jsonl"
    lines = train_file.read_text().splitlines()
    bad = json.loads(lines[2])
    del bad["output"]
    lines[2] = json.dumps(bad)
    train_file.write_text("\n".join(lines) + "\n")
    proc = subprocess.run(_stage_cmd(stage_dir, tiny_model_dir), cwd=stage_dir, env=_env(stage_dir),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "train.jsonl, row 3, field 'output'" in last
    assert not (stage_dir / "models/adapter").exists() and not (stage_dir / "metrics/train.json").exists()
    assert not (stage_dir / "metrics/carbon/train.json").exists()


def test_stage_help_is_its_docstring():
    proc = subprocess.run([sys.executable, "-m", "stages.train", "--help"], cwd=ROOT, capture_output=True,
                          text=True, env=_env(ROOT))
    assert proc.returncode == 0 and "QLoRA" in proc.stdout and "torchrun" in proc.stdout
