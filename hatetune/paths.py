"""Every path the pipeline reads or writes, relative to the project root (DVC runs stages from there).

This is the one place path literals live in `hatetune/` and `stages/`; `dvc.yaml` spells the same paths with
`${task.name}` / `${model.name}` templates, and tests/test_dvc_contract.py checks that the two agree.
Functions take names (a task name, a model name, a stage name), never a config, so the paths are easy to test.
"""
from __future__ import annotations

from pathlib import Path

DATA = Path("data")
MODELS = Path("models")
METRICS = Path("metrics")
LOGS = Path("logs")
SPLITS = ("train", "dev", "test")
LABELS_FILE, SPLIT_FILE = "labels.csv", "split.json"  # the labels stage's files in interim_dir
POSTS_FILE = "posts.jsonl"  # a generation task's canonical table in interim_dir (one post per line, with its links)
REPLIES_FILE = "replies.jsonl"  # the replies stage's self-distilled replies, in replies_dir (beside train/dev.jsonl)
DVC_CACHE = Path(".dvc") / "cache"  # DVC's copies of every cached output (posts included)
# Folders holding posts, annotator ids or models trained on them: owner-only under privacy.owner_only.
PRIVATE_DIRS = (DATA, MODELS, DVC_CACHE)


# ------------------------------------------------------------------------------------------------ data
def data_source_file(task: str) -> Path:
    """Where the `sources` stage records which files the task's data come from (mirror or network)."""
    return DATA / "raw" / f"{task}.source.json"


def raw_dir(task: str) -> Path:
    """The download stage's output: upstream data files + manifest.json."""
    return DATA / "raw" / task


def interim_dir(task: str) -> Path:
    """The labels stage's output: the canonical table and how it was split."""
    return DATA / "interim" / task


def labels_csv(task: str) -> Path:
    return interim_dir(task) / LABELS_FILE


def processed_dir(task: str) -> Path:
    """The convert stage's output: Alpaca JSONL per split."""
    return DATA / "processed" / task


def split_file(task: str, split: str) -> Path:
    return processed_dir(task) / f"{split}.jsonl"


# A functional test suite (eval.functional: HateCheck), independent of the task. Disabled, these hold only a record
# saying so.
FUNCTIONAL_SOURCE_FILE = DATA / "raw" / "functional.source.json"  # the sources stage's record of the suite
FUNCTIONAL_RAW_DIR = DATA / "raw" / "functional"  # the suite's file(s) as fetched + manifest.json
FUNCTIONAL_DIR = DATA / "interim" / "functional"  # the checked cases (cases.jsonl) and suite.json
FUNCTIONAL_CASES, FUNCTIONAL_SUMMARY = "cases.jsonl", "suite.json"
def posts_file(task: str) -> Path:
    """A generation task's canonical table: one deduplicated post per line, with its split, links and sources."""
    return interim_dir(task) / POSTS_FILE


def judge_data_file(task: str, split: str) -> Path:
    """A generation task's labelled posts for the judge: train (its TF-IDF fallback's), dev (the adapter judge's
    decision rule is fitted there), test (the judge's own score)."""
    return processed_dir(task) / f"judge_{split}.jsonl"


def replies_dir(task: str) -> Path:
    """The replies stage's output: a generation task's training rows with their outputs resolved for the target
    mode, and the base model's own replies to the rows that ask for one (self-distillation)."""
    return DATA / "replies" / task


def training_data_dir(task: str, kind: str) -> Path:
    """Where the train stage finds {train,dev}.jsonl: the convert stage's rows, or for a generation task the
    replies stage's (the outputs resolved for task.targets.mode)."""
    return replies_dir(task) if kind == "generation" else processed_dir(task)


# ---------------------------------------------------------------------------------------------- models
def base_source_file(model: str) -> Path:
    """Where the `sources` stage records which base weights this run uses (mirror GGUF sha256 / Hub commit)."""
    return MODELS / "base" / f"{model}.source.json"


def base_model_dir(model: str) -> Path:
    """The base_model stage's output: a Hugging Face folder, or a pointer to the Hub cache / a local folder."""
    return MODELS / "base" / model


def adapter_dir(task: str) -> Path:
    """The train stage's output: the LoRA adapter (+ tokenizer and chat template)."""
    return MODELS / "adapter" / task


def checkpoint_dir(task: str) -> Path:
    """Trainer checkpoints, kept across runs (DVC `persist`) so a killed run resumes."""
    return MODELS / "checkpoints" / task


def judge_source_file(task: str) -> Path:
    """Where the `sources` stage records which judge a generation task's replies get (an adapter and its sha256,
    or the TF-IDF fallback and why), so the judge stage reruns when that changes."""
    return MODELS / "judge" / f"{task}.source.json"


def release_dir(task: str) -> Path:
    """The report stage's copy of the adapter with its model card."""
    return MODELS / "release" / task


def export_dir(task: str) -> Path:
    """The export stage's output: the merged model as GGUF + an Ollama Modelfile (or, for a base without a source
    GGUF, the merged Hugging Face folder that llama.cpp's converter reads)."""
    return MODELS / "export" / task


GGUF_FILE, MODELFILE, MERGED_DIR = "model.gguf", "Modelfile", "merged"  # the files of export_dir


# --------------------------------------------------------------------------------------------- metrics
DATA_METRICS = METRICS / "data.json"
TRAIN_METRICS = METRICS / "train.json"
TRAIN_RUN = METRICS / "train_run.json"  # resolved config, library versions, CPU/GPU and threads of the run
TRAIN_CURVES = METRICS / "train_curves"
TRAIN_CURVE_PLOTS = TRAIN_CURVES / "plots" / "metrics"  # dvclive's TSV files, one per curve
REPORT_MD = METRICS / "report.md"
REPORT_DIR = METRICS / "report"
CARBON_DIR = METRICS / "carbon"
CARBON_TOTAL = CARBON_DIR / "total.json"
EXPORT_METRICS = METRICS / "export.json"
# The systems every report compares: fine-tuned, zero-shot and the TF-IDF baseline (results_base names).
EVAL, ZEROSHOT, BASELINE = "eval", "zeroshot", "baseline"
JUDGE = "judge"  # a generation task's judged replies (hateful-reply rates) and the judge's own test scores
JUDGE_TEST = "judge_test"  # in results_base(JUDGE): the judge's predictions and scores on its own test posts
# The files of one evaluated split, in <results base>/<split>/.
PREDICTIONS_FILE, CONFUSION_FILE = "predictions.jsonl", "confusion.csv"
# A calibrated run's decision-rule plots, in <results base>/.
PR_CURVE_FILE, RELIABILITY_FILE = "pr_curve.png", "reliability.png"
GROUPS_FILE = "groups.json"  # results per group of one evaluated set, in <results base>/<set>/
FUNCTIONAL_HEATMAP = REPORT_DIR / "functional.png"  # accuracy per functionality x system (when a suite was scored)


def results_base(name: str) -> Path:
    """`<base>.json` (a DVC metric) and `<base>/` (predictions, confusion) of one evaluated system."""
    return METRICS / name


def external_results_base(data_file: str | Path) -> Path:
    """Results of scoring a hand-picked Alpaca JSONL (`eval.data`)."""
    return METRICS / "external" / Path(data_file).stem


def calibration_file(base: str | Path) -> Path:
    """The decision rule fitted on dev by an evaluation run (read by the service too)."""
    return Path(base) / "calibration.json"


def results_json(base: str | Path) -> Path:
    base = Path(base)
    return base.with_name(base.name + ".json")


def confusion_csv(name: str, split: str) -> Path:
    return results_base(name) / split / CONFUSION_FILE


def carbon_file(stage: str) -> Path:
    """codecarbon's measurement of one stage."""
    return CARBON_DIR / f"{stage}.json"


def predictions_file(name: str, split: str) -> Path:
    """The per-example records of one evaluated split (what the export stage compares the GGUF's labels with)."""
    return results_base(name) / split / PREDICTIONS_FILE


# ------------------------------------------------------------------------------------------------- serve
REQUEST_LOG = LOGS / "requests.sqlite"  # the service's request log (serve.log_db); not a DVC output


def pipeline_paths(task: str, model: str) -> set[Path]:
    """The paths dvc.yaml names for one task and model (its deps, outs, metrics and plots); a test checks that
    dvc.yaml names exactly these."""
    found = {data_source_file(task), raw_dir(task), interim_dir(task), processed_dir(task),
             split_file(task, "train"), split_file(task, "dev"), base_source_file(model), base_model_dir(model),
             adapter_dir(task), checkpoint_dir(task), release_dir(task), DATA_METRICS, TRAIN_METRICS, TRAIN_RUN,
             TRAIN_CURVES, TRAIN_CURVE_PLOTS, REPORT_MD, REPORT_DIR, CARBON_TOTAL, confusion_csv(EVAL, "test"),
             FUNCTIONAL_SOURCE_FILE, FUNCTIONAL_RAW_DIR, FUNCTIONAL_DIR, replies_dir(task), judge_source_file(task),
             split_file(task, "test"), export_dir(task), EXPORT_METRICS}
    for name in (EVAL, ZEROSHOT, BASELINE, JUDGE):
        found |= {results_base(name), results_json(results_base(name))}
    found |= {carbon_file(stage) for stage in ("train", "evaluate", "evaluate_zeroshot", "replies", "judge", "export")}
    found |= {REPORT_DIR / f"{name}.png" for name in ("loss", "per_class_f1", "confusion")}
    return found
