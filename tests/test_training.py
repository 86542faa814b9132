"""hatetune.training: Trainer settings, and real tiny training runs (in-process, killed-and-resumed, with 2
processes, through the stage script); the loss a fixed tiny run reaches is pinned (golden loss)."""
from __future__ import annotations

import csv
import json
import os
from importlib import metadata
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hatetune import checkpoints, config, inference, model_sources, models, parsing, paths, training
from training_data import make_rows, write_processed

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg(tiny_model_dir):
    return config.load([f"model.path={tiny_model_dir}"], ROOT / "params.yaml")


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
    assert args.report_to == []  # no integration writes anything (dvclive is added as our own callback)
    assert args.eval_strategy == "steps" and args.eval_steps == (tr.eval_steps or tr.save_steps)
    assert args.max_grad_norm == tr.max_grad_norm and args.weight_decay == tr.weight_decay
    cfg.train.warmup_ratio, cfg.train.warmup_steps, cfg.train.max_steps = 0.0, 5, 1000
    cfg.train.optimizer, cfg.train.group_by_length = "paged_adamw_8bit", False
    args = training.training_arguments(cfg, tmp_path, "fp32", has_eval=False)
    assert args.warmup_steps == 5 and args.max_steps == 1000 and args.optim == "paged_adamw_8bit"
    assert args.train_sampling_strategy == "random" and not args.bf16 and args.eval_strategy == "no"
    assert args.seed == cfg.seed
    cfg.train.seed = cfg.seed + 1  # train.seed: LoRA init and batch order only, the data stay as they were
    assert training.training_arguments(cfg, tmp_path, "fp32", has_eval=False).seed == cfg.seed + 1


def test_lora_alpha_defaults_to_twice_r_and_targets_pass_through(cfg):
    cfg.lora.r = 32
    assert training.lora_config(cfg).lora_alpha == 64
    cfg.lora.alpha, cfg.lora.target_modules, cfg.lora.bias = 16, ["q_proj", "lm_head"], "lora_only"
    lc = training.lora_config(cfg)
    assert (lc.r, lc.lora_alpha, lc.bias, set(lc.target_modules)) == (32, 16, "lora_only", {"q_proj", "lm_head"})


# ----------------------------------------------------------------------------------- real training runs
def _greedy_labels(cfg, base_dir, adapter, rows) -> list[str]:
    model = models.load_model(cfg.model, base_dir, adapter_dir=adapter)
    tok = models.load_tokenizer(base_dir, cfg.model)
    labels = list(cfg.task.labels.names)
    run = inference.classify(model, tok, rows, cfg.task.prompt, labels, parsing.get_parser(cfg.task.parser, labels),
                             mode="greedy", agreement=False, progress=False, cutoff_len=cfg.train.cutoff_len)
    return run["predicted"]


def test_tiny_training_run_learns_the_task_and_saves_a_loadable_adapter(cfg, tiny_model_dir, tmp_path):
    data = write_processed(tmp_path / "data", n_train=64, n_dev=8)
    cfg.train.lr, cfg.train.epochs, cfg.train.batch_size, cfg.train.save_steps = 1e-2, 4.0, 8, 100
    cfg.train.eval_steps = 8
    metrics = training.train(cfg, tiny_model_dir, data, tmp_path / "adapter", tmp_path / "ckpt",
                             curves_dir=tmp_path / "curves", metrics_path=tmp_path / "train.json",
                             run_path=tmp_path / "run.json")
    assert json.loads((tmp_path / "train.json").read_text()) == metrics
    assert metrics["global_step"] == 32 and metrics["examples"] == 256 and metrics["train_rows"] == 64
    assert metrics["trainable_params"] > 0 and metrics["truncated_examples"] == 0
    assert metrics["tokens_per_computed_position"] > 1.5 and metrics["non_padding_tokens_per_s"] > 0  # packed
    assert metrics["peak_rss_mb"] > 0 and metrics["resumed_from_step"] == 0
    losses = [float(line.split("\t")[1]) for line in
              (tmp_path / "curves/plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    eval_steps = [line.split("\t")[0] for line in
                  (tmp_path / "curves/plots/metrics/eval/loss.tsv").read_text().splitlines()[1:]]
    assert losses[-1] < losses[0] / 2 and eval_steps == ["8", "16", "24", "32"]
    assert (tmp_path / "curves/plots/metrics/learning_rate.tsv").is_file()
    assert (tmp_path / "curves/plots/metrics/grad_norm.tsv").is_file()
    peaks = [float(line.split("\t")[-1]) for line in
             (tmp_path / "curves/plots/metrics/peak_rss_mb.tsv").read_text().splitlines()[1:]]
    assert peaks and 0 < peaks[0] and peaks == sorted(peaks) and peaks[-1] <= metrics["peak_rss_mb"]
    # the run record: the resolved config, versions, hardware, threads
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["config"]["lora"]["r"] == cfg.lora.r and record["config"]["train"]["lr"] == 1e-2
    assert record["versions"]["torch"] == metadata.version("torch") and record["versions"]["peft"]
    assert record["cpu"] and record["torch_threads"] == torch.get_num_threads()
    # checkpoints are gone after success; the adapter is a standard PEFT folder that learnt the task: the first
    # word of each held-out post gives its label away, and the untrained model gets it wrong
    assert not list((tmp_path / "ckpt").glob("checkpoint-*"))
    assert {"adapter_config.json", "adapter_model.safetensors", "chat_template.jinja"} <= \
        {p.name for p in (tmp_path / "adapter").iterdir()}
    held_out = make_rows(16, seed=7)
    gold = [r["output"] for r in held_out]
    trained = _greedy_labels(cfg, tiny_model_dir, tmp_path / "adapter", held_out)
    assert sum(p == g for p, g in zip(trained, gold)) >= 14, trained
    assert sum(p == g for p, g in zip(_greedy_labels(cfg, tiny_model_dir, None, held_out), gold)) < 14


def test_golden_loss_of_a_fixed_tiny_run(cfg, tiny_model_dir, tmp_path):
    """The mean training loss of 6 fixed steps on the tiny model (random weights from a fixed seed, fixed rows):
    a silent change to tokenisation, masking, the loss or the optimizer moves it. Recorded on this project's
    CPU machines (bf16 autocast, 1 thread); another CPU's bf16 rounding stays well inside the tolerance."""
    data = write_processed(tmp_path / "data", n_train=24, n_dev=4)
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.lr, cfg.train.eval_examples = 6, 4, 5e-3, 4
    metrics = training.train(cfg, tiny_model_dir, data, tmp_path / "adapter", tmp_path / "ckpt")
    assert metrics["train_loss"] == pytest.approx(GOLDEN_TRAIN_LOSS, rel=0.02)
    assert metrics["eval_loss"] == pytest.approx(GOLDEN_EVAL_LOSS, rel=0.02)


GOLDEN_TRAIN_LOSS, GOLDEN_EVAL_LOSS = 5.2162, 4.0083  # recorded on the Intel Xeon (avx512_bf16, AMX) CI machine


def test_reruns_give_byte_identical_adapters(cfg, tiny_model_dir, tmp_path):
    data = write_processed(tmp_path / "data", n_train=16, n_dev=4)
    cfg.train.max_steps, cfg.train.batch_size = 3, 4
    digests = []
    for run in ("a", "b"):
        training.train(cfg, tiny_model_dir, data, tmp_path / run, tmp_path / f"ckpt-{run}")
        digests.append({p.name: p.read_bytes() for p in sorted((tmp_path / run).iterdir())})
    assert digests[0] == digests[1]
    config_json = json.loads(digests[0]["adapter_config.json"])
    assert config_json["target_modules"] == sorted(config_json["target_modules"])


@pytest.mark.parametrize("preset", ["stophate_llama2_13b", "mhs_mistral7b", "dynahate_llama31_8b"])
def test_preset_training_settings_run_on_the_tiny_model(preset, tiny_model_dir, tmp_path):
    """Each seed's training side (optimizer, precision fallback, warmup, lm_head target, bias, loss_on, gradient
    checkpointing) runs end to end; only model, data, template and step count are shrunk."""
    cfg = config.validate(config.compose([f"+experiment={preset}", f"model.path={tiny_model_dir}",
                                          "model.chat_template=null", "train.max_steps=2", "train.batch_size=2",
                                          "train.grad_accum=1", "train.cutoff_len=128", "train.eval_examples=2"]))
    data = write_processed(tmp_path / "data", n_train=8, n_dev=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = training.train(cfg, tiny_model_dir, data, tmp_path / "adapter", tmp_path / "ckpt")
    assert metrics["global_step"] == 2 and metrics["trainable_params"] > 0
    if cfg.train.precision == "fp16":  # no fp16 autocast on a CPU
        assert metrics["precision"] in ("bf16", "fp32")
        assert any("fp16 is not supported" in str(w.message) for w in caught)
    saved = json.loads((tmp_path / "adapter/adapter_config.json").read_text())
    assert saved["r"] == cfg.lora.r and saved["lora_alpha"] == config.lora_alpha(cfg)
    assert saved["bias"] == cfg.lora.bias
    if "lm_head" in cfg.lora.target_modules:
        assert "lm_head" in saved["target_modules"]


# ------------------------------------------------------------------------------------ the stage script
@pytest.fixture
def stage_dir(tmp_path, tiny_model_dir):
    """A working directory laid out like the project (params.yaml, dvc.yaml, base model pointer, processed data),
    so the stage runs with its dvc.yaml view of the config."""
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    write_processed(tmp_path / paths.processed_dir("dynahate"), n_train=64, n_dev=8)
    cfg = config.load([f"model.path={tiny_model_dir}"], tmp_path / "params.yaml")
    model_sources.materialise(model_sources.resolve(cfg.model, None), tmp_path / paths.base_model_dir(cfg.model.name),
                              None)
    return tmp_path


def _stage(stage_dir, tiny_model_dir, *overrides, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "stages.train", f"model.path={tiny_model_dir}", *overrides],
                            cwd=stage_dir, env=env, **kw)


def _run_stage(stage_dir, tiny_model_dir, *overrides) -> subprocess.CompletedProcess:
    proc = _stage(stage_dir, tiny_model_dir, *overrides, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _losses(stage_dir) -> dict[int, float]:
    with open(stage_dir / paths.TRAIN_CURVES / "plots/metrics/loss.tsv", newline="") as f:
        return {int(row["step"]): float(row["loss"]) for row in csv.DictReader(f, delimiter="\t")}


RESUME_SETTINGS = ["train.max_steps=24", "train.save_steps=2", "train.batch_size=2", "train.eval_examples=2",
                   "train.logging_steps=2", "lora.dropout=0.0"]


def test_killed_run_resumes_to_the_same_adapter_and_losses_as_an_uninterrupted_run(stage_dir, tiny_model_dir,
                                                                                   tmp_path_factory):
    uninterrupted = tmp_path_factory.mktemp("whole")
    for name in ("params.yaml", "dvc.yaml", "data", "models"):
        (shutil.copytree if (stage_dir / name).is_dir() else shutil.copy)(stage_dir / name, uninterrupted / name)
    whole = _run_stage(uninterrupted, tiny_model_dir, *RESUME_SETTINGS)
    assert whole.returncode == 0, whole.stderr[-3000:]

    ckpt = stage_dir / paths.checkpoint_dir("dynahate")
    proc = _stage(stage_dir, tiny_model_dir, *RESUME_SETTINGS, stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        last = checkpoints.last_complete_checkpoint(ckpt)
        if last and checkpoints.step_of(last) >= 6:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = checkpoints.last_complete_checkpoint(ckpt)
    assert killed_at is not None and checkpoints.step_of(killed_at) < 24, "no checkpoint before the kill"
    assert not (stage_dir / paths.TRAIN_METRICS).exists()
    assert not (stage_dir / paths.adapter_dir("dynahate")).exists()  # nothing half-written

    rerun = _run_stage(stage_dir, tiny_model_dir, *RESUME_SETTINGS)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stdout
    metrics = json.loads((stage_dir / paths.TRAIN_METRICS).read_text())
    resumed_from = metrics["resumed_from_step"]
    assert resumed_from >= checkpoints.step_of(killed_at) and metrics["global_step"] == 24
    assert metrics["examples"] == (24 - resumed_from) * 2  # only the remaining steps ran
    # the same run as if never interrupted: the same losses after the resume, the same final adapter
    expected, got = _losses(uninterrupted), _losses(stage_dir)
    after = [step for step in expected if step > resumed_from]
    assert after and [got[s] for s in after] == pytest.approx([expected[s] for s in after], rel=1e-3)
    final = load_file(stage_dir / paths.adapter_dir("dynahate") / "adapter_model.safetensors")
    reference = load_file(uninterrupted / paths.adapter_dir("dynahate") / "adapter_model.safetensors")
    assert final.keys() == reference.keys()
    for name in reference:
        assert torch.allclose(final[name].float(), reference[name].float(), atol=1e-3, rtol=1e-2), name
    assert json.loads((stage_dir / paths.carbon_file("train")).read_text())["energy_kwh"] > 0


def test_two_processes_train_with_torchrun_on_cpu(stage_dir, tiny_model_dir):
    proc = _run_stage(stage_dir, tiny_model_dir, "train.nproc=2", "train.max_steps=4", "train.batch_size=2",
                      "train.logging_steps=1", "train.eval_examples=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((stage_dir / paths.TRAIN_METRICS).read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 4
    assert metrics["examples"] == 4 * 2 * 2  # steps x per-device batch x processes
    assert (stage_dir / paths.adapter_dir("dynahate") / "adapter_model.safetensors").is_file()
    carbon = json.loads((stage_dir / paths.carbon_file("train")).read_text())
    assert carbon["stage"] == "train" and carbon["duration_s"] > 0


def test_stage_fails_in_one_line_on_a_bad_row_and_writes_nothing(stage_dir, tiny_model_dir):
    train_file = stage_dir / paths.split_file("dynahate", "train")
    lines = train_file.read_text().splitlines()
    bad = json.loads(lines[2])
    del bad["output"]
    lines[2] = json.dumps(bad)
    train_file.write_text("\n".join(lines) + "\n")
    proc = _run_stage(stage_dir, tiny_model_dir)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "train.jsonl, row 3, field 'output'" in last
    assert not (stage_dir / "models/adapter").exists() and not (stage_dir / paths.TRAIN_METRICS).exists()
    assert not (stage_dir / paths.carbon_file("train")).exists()


def test_stage_help_is_its_docstring():
    proc = subprocess.run([sys.executable, "-m", "stages.train", "--help"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "QLoRA" in proc.stdout and "torchrun" in proc.stdout


def test_step_lines_show_curves_and_skip_the_summary_that_only_carries_peak_memory(capsys):
    from types import SimpleNamespace

    progress = training.StepLineProgress()
    state = SimpleNamespace(is_world_process_zero=True, global_step=5, max_steps=10, epoch=0.5)
    progress.on_log(None, state, None, logs={"train_runtime": 3.0, "peak_rss_mb": 812.0})
    assert capsys.readouterr().out == ""
    progress.on_log(None, state, None, logs={"loss": 0.25, "peak_rss_mb": 812.0})
    assert capsys.readouterr().out == "step 5/10  epoch 0.50  loss 0.25  peak_rss_mb 812\n"
