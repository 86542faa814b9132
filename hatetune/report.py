"""Tables, PNG plots (viewable offline), the markdown report and the Hugging Face-style model card.

Everything here is a pure function of metrics dicts and config (no model), so the report stage and the
tests need nothing but files. Plots are written with fixed size, DPI and no timestamp metadata, so the same
numbers give byte-identical PNGs.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from .io import atomic_path
from .parsing import INVALID, SEED_C_INVALID_NAME

SYSTEMS = (("fine-tuned", "eval"), ("zero-shot", "zeroshot"), ("TF-IDF + LR baseline", "baseline"))
PNG_METADATA = {"Software": None}  # no matplotlib version in the file: stable bytes across upgrades


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata=PNG_METADATA)
    _pyplot().close(fig)


# ------------------------------------------------------------------------------------------------- plots
def plot_confusion(names: Sequence[str], counts: Sequence[Sequence[int]], path: str | Path, title: str) -> None:
    """One confusion matrix (rows: actual, columns: predicted), counts written in the cells."""
    plot_confusions({title: (names, counts)}, path)


def plot_confusions(matrices: Mapping[str, tuple], path: str | Path) -> None:
    """Confusion matrices side by side, one per system: {title: (names, counts)}."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 4), squeeze=False)
    for ax, (title, (names, counts)) in zip(axes[0], matrices.items()):
        n = len(names)
        ax.imshow(counts, cmap="Blues")
        peak = max((max(row) for row in counts), default=0)
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(counts[i][j]), ha="center", va="center",
                        color="white" if counts[i][j] > peak / 2 else "black")
        ax.set_xticks(range(n), names, rotation=30, ha="right")
        ax.set_yticks(range(n), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, Path(path))


def plot_per_class_f1(systems: Mapping[str, Mapping], labels: Sequence[str], path: str | Path) -> None:
    """Grouped bars: F1 of each real class for each system ({system: metrics of one split})."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(1, len(systems))
    for k, (name, m) in enumerate(systems.items()):
        values = [m["per_class"].get(label, {}).get("f1", 0.0) for label in labels]
        bars = ax.bar([i + k * width for i in range(len(labels))], values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(labels))], labels)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("F1")
    ax.set_title("Per-class F1")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    _save(fig, Path(path))


def read_curves(curves_dir: str | Path) -> Dict[str, tuple[List[float], List[float]]]:
    """dvclive's TSV curves under `curves_dir` ({name: (steps, values)}, name = path below plots/metrics)."""
    curves = {}
    root = Path(curves_dir)
    for path in sorted(root.rglob("*.tsv")):
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue
        value_key = [k for k in rows[0] if k not in ("step", "timestamp")][-1]
        name = path.relative_to(root).with_suffix("").as_posix().split("plots/metrics/")[-1]
        curves[name] = ([float(r["step"]) for r in rows], [float(r[value_key]) for r in rows])
    return curves


def plot_loss_curves(curves: Mapping[str, tuple], path: str | Path) -> bool:
    """Training (and dev) loss against the optimizer step; False (nothing written) when there is no curve."""
    losses = {name: xy for name, xy in curves.items() if name.split("/")[-1] in ("loss", "eval_loss")}
    if not losses:
        return False
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (steps, values) in losses.items():
        ax.plot(steps, values, marker="o" if len(steps) < 30 else None, markersize=3, label=name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Training loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, Path(path))
    return True


# ------------------------------------------------------------------------------------------------ tables
def _f(x, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _invalid_name(cfg) -> str:
    return f"{INVALID} (seed C: {SEED_C_INVALID_NAME})" if cfg.task.parser == "mhs_substring" else INVALID


def results_table(systems: Mapping[str, Optional[Mapping]]) -> str:
    """Markdown: one row per system ({name: metrics of one split or None when missing})."""
    lines = ["| system | n | accuracy | macro-F1 (real labels) | macro-F1 (invalid averaged in, seed C) | "
             "invalid rate |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in systems.items():
        if m is None:
            lines.append(f"| {name} | – | – | – | – | – |")
            continue
        lines.append(f"| {name} | {m['n']} | {_f(m['accuracy'])} | {_f(m['macro_f1'])} | "
                     f"{_f(m['macro_f1_with_invalid'])} | {m['invalid_rate']:.2%} |")
    return "\n".join(lines)


def per_class_table(systems: Mapping[str, Optional[Mapping]], labels: Sequence[str], invalid_name: str) -> str:
    present = {name: m for name, m in systems.items() if m}
    header = "| class | " + " | ".join(f"{name} P / R / F1" for name in present) + " | support |"
    lines = [header, "|---|" + "---:|" * (len(present) + 1)]
    rows = list(labels) + ([INVALID] if any(INVALID in m["per_class"] for m in present.values()) else [])
    for label in rows:
        cells, support = [], 0
        for m in present.values():
            c = m["per_class"].get(label)
            cells.append("–" if c is None else f"{c['precision']:.2f} / {c['recall']:.2f} / {c['f1']:.2f}")
            support = max(support, c["support"] if c else 0)
        lines.append(f"| {invalid_name if label == INVALID else label} | " + " | ".join(cells) + f" | {support} |")
    return "\n".join(lines)


def carbon_table(measurements: Mapping[str, Mapping], estimate: Mapping) -> str:
    lines = ["| stage | duration (s) | energy (kWh) | emissions (kg CO2eq) | how |", "|---|---:|---:|---:|---|"]
    for stage, m in measurements.items():
        lines.append(f"| {stage} | {_f(m.get('duration_s'), 1)} | {_f(m.get('energy_kwh'), 6)} | "
                     f"{_f(m.get('emissions_kg'), 6)} | codecarbon ({m.get('tracking_mode') or 'measured'}, "
                     f"{m.get('country_iso_code') or '?'}) |")
    total = measured_totals(measurements)
    lines.append(f"| **all measured** | {_f(total['duration_s'], 1)} | {_f(total['energy_kwh'], 6)} | "
                 f"{_f(total['emissions_kg'], 6)} | sum |")
    lines.append(f"| Lacoste et al. estimate | {_f(estimate['hours'] * 3600, 1)} | {_f(estimate['energy_kwh'], 6)} | "
                 f"{_f(estimate['emissions_kg'], 6)} | {estimate['hours']:g} h x {estimate['device_power_w']:g} W "
                 f"({estimate.get('device', '')}) x PUE {estimate['pue']:g} x "
                 f"{estimate['carbon_intensity_kg_per_kwh']:g} kg/kWh |")
    return "\n".join(lines)


def measured_totals(measurements: Mapping[str, Mapping]) -> dict:
    def total(key):
        return round(sum(m.get(key) or 0.0 for m in measurements.values()), 6)

    return {"duration_s": total("duration_s"), "energy_kwh": total("energy_kwh"),
            "emissions_kg": total("emissions_kg")}


def training_summary(train: Optional[Mapping]) -> str:
    if not train:
        return "No training metrics (metrics/train.json) found."
    keys = [("global_step", "optimizer steps"), ("epochs", "epochs"), ("train_rows", "training rows"),
            ("train_loss", "mean training loss"), ("eval_loss", "final dev loss"),
            ("train_runtime_s", "training time (s)"), ("examples_per_s", "examples / s"),
            ("non_padding_tokens_per_s", "non-padding tokens / s"), ("peak_rss_mb", "peak RSS (MB)"),
            ("trainable_params", "trainable parameters"), ("precision", "precision"),
            ("truncated_examples", "truncated examples")]
    lines = ["| | |", "|---|---:|"]
    lines += [f"| {label} | {train[key]} |" for key, label in keys if train.get(key) is not None]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- documents
def hyperparameters(cfg) -> Dict[str, object]:
    from .config import lora_alpha

    q = cfg.model.quantization
    tr = cfg.train
    return {
        "base model": f"{cfg.model.hub_id} @ {cfg.model.revision}",
        "quantization": (f"4-bit {q.quant_type}, double quant {q.double_quant}, compute {q.compute_dtype}"
                         if q.load_in_4bit else "none"),
        "LoRA": (f"r {cfg.lora.r}, alpha {lora_alpha(cfg):g}, dropout {cfg.lora.dropout}, bias {cfg.lora.bias}, "
                 f"targets {cfg.lora.target_modules if isinstance(cfg.lora.target_modules, str) else ', '.join(cfg.lora.target_modules)}"),
        "batch": f"{tr.batch_size} x grad-acc {tr.grad_accum}",
        "learning rate": f"{tr.lr:g}, {tr.scheduler}, warmup ratio {tr.warmup_ratio} / steps {tr.warmup_steps}",
        "length": f"{tr.epochs:g} epochs" if tr.max_steps is None else f"{tr.max_steps} steps",
        "optimizer": f"{tr.optimizer}, weight decay {tr.weight_decay}",
        "precision": tr.precision,
        "cutoff": f"{tr.cutoff_len} tokens",
        "loss on": tr.loss_on,
        "evaluation": (f"{cfg.eval.mode}, max {cfg.eval.max_new_tokens} new tokens, batch {cfg.eval.batch_size}, "
                       f"parser {cfg.task.parser}"),
        "seed": cfg.seed,
    }


def _kv_table(items: Mapping[str, object]) -> str:
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in items.items()])


def _prompt_block(cfg, example_prompt: Optional[str]) -> str:
    p = cfg.task.prompt
    parts = [f"Format: `{p.format}`" + (" (the tokenizer's chat template)" if p.format == "chat" else "")]
    if p.system:
        parts.append(f"System: `{p.system}`")
    parts.append(f"Instruction: `{p.instruction}`")
    if p.template:
        parts.append(f"Template: `{json.dumps(p.template)[1:-1]}`")
    if example_prompt:
        parts.append("The model input for a post `<post>` (the answer follows it):\n\n```text\n" + example_prompt
                     + "\n```")
    return "\n\n".join(parts)


def split_sizes_table(data: Optional[Mapping]) -> str:
    if not data or "rows" not in data:
        return "Split sizes unknown (metrics/data.json missing)."
    rows = data["rows"]
    labels = data.get("labels", {})
    lines = ["| split | rows | labels |", "|---|---:|---|"]
    for split in ("train", "dev", "test"):
        if split in rows:
            counts = ", ".join(f"{k} {v}" for k, v in labels.get(split, {}).items())
            lines.append(f"| {split} | {rows[split]} | {counts} |")
    return "\n".join(lines)


def build_report(cfg, split: str, systems: Mapping[str, Optional[Mapping]], train: Optional[Mapping],
                 measurements: Mapping[str, Mapping], estimate: Mapping, data: Optional[Mapping],
                 plots: Sequence[str]) -> str:
    """metrics/report.md: results of the three systems, training summary, energy and emissions, plots."""
    labels = list(cfg.task.labels.names)
    warnings = (data or {}).get("warnings") or []
    out = [f"# hatetune report: {cfg.task.name} / {cfg.model.name}", "",
           f"Test set: `{split}` split of `data/processed/{cfg.task.name}/`. Fine-tuned and zero-shot use the same "
           f"prompts, decoding ({cfg.eval.mode}, max {cfg.eval.max_new_tokens} new tokens) and parser "
           f"(`{cfg.task.parser}`); an unparseable answer is `{_invalid_name(cfg)}` and counts as wrong.", ""]
    out += [f"> Note: {w}" for w in warnings] + ([""] if warnings else [])
    out += ["## Results", "", results_table(systems), "",
            "macro-F1 (real labels): averaged over the task's labels (seed B's `labels=`). "
            "macro-F1 (invalid averaged in): scikit-learn's default label set, so `invalid` (F1 0) joins the "
            "average whenever it was predicted — seed C's published convention.", "",
            "### Per class", "", per_class_table(systems, labels, _invalid_name(cfg)), "",
            "## Training", "", training_summary(train), "",
            "## Energy and emissions", "", carbon_table(measurements, estimate), "",
            "Measured: codecarbon's offline tracker per stage (without RAPL or GPU counters it estimates power from "
            "CPU load and RAM). Estimate: Lacoste et al. (2019), with the `carbon` config "
            f"({estimate.get('hours_source', 'config')}).", "",
            "## Plots", ""]
    out += [f"![{Path(p).stem}]({Path(p).relative_to('metrics').as_posix() if str(p).startswith('metrics') else p})"
            for p in plots]
    return "\n".join(out) + "\n"


def model_card(cfg, split: str, systems: Mapping[str, Optional[Mapping]], train: Optional[Mapping],
               measurements: Mapping[str, Mapping], estimate: Mapping, data: Optional[Mapping],
               example_prompt: Optional[str] = None) -> str:
    """README.md of the released adapter, in Hugging Face model-card style (YAML header + sections)."""
    labels = list(cfg.task.labels.names)
    dataset = cfg.task.source.repo_id or cfg.task.source.url or cfg.task.source.name
    header = ["---", f"base_model: {cfg.model.hub_id}", "library_name: peft", "pipeline_tag: text-generation",
              "tags:", "- peft", "- lora", "- qlora", "- hate-speech-detection", "- text-classification", "- hatetune"]
    if cfg.task.source.repo_id:
        header += ["datasets:", f"- {cfg.task.source.repo_id}"]
    header += ["language:", "- en", "---", ""]
    totals = measured_totals(measurements)
    body = [
        f"# {cfg.model.name} QLoRA adapter for {cfg.task.name} hate-speech classification", "",
        "> **Content warning**: this model and its data concern hate speech. Examples, predictions and the "
        "dataset contain offensive, slurring and hateful language.", "",
        f"A LoRA adapter for [{cfg.model.hub_id}](https://huggingface.co/{cfg.model.hub_id}) that answers with "
        f"one label: {', '.join(f'`{label}`' for label in labels)}. Trained and evaluated with "
        "hatetune (a DVC pipeline: `dvc repro` reproduces this folder).", "",
        "## Model details", "", _kv_table(hyperparameters(cfg)), "",
        "## Training data", "",
        f"Dataset: `{dataset}` (task `{cfg.task.name}`, split strategy `{cfg.task.split.strategy}`).", "",
        split_sizes_table(data), "",
        *([f"> {w}" for w in (data or {}).get("warnings") or []] + [""]),
        "## Prompt", "", _prompt_block(cfg, example_prompt), "",
        "## Usage", "", "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{cfg.model.hub_id}")',
        'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "# build the prompt exactly as above (hatetune.prompts.build_prompt), then greedy-decode a few tokens",
        "```", "",
        "or score a JSONL file with hatetune: `python -m stages.evaluate eval.data=my_rows.jsonl "
        "eval.adapter_dir=path/to/this/folder`.", "",
        "## Evaluation", "",
        f"`{split}` split; same prompts, decoding and parser for the fine-tuned and the zero-shot model.", "",
        results_table(systems), "",
        "Both macro-F1 conventions: over the real labels (seed B), and with unparseable answers "
        f"(`{_invalid_name(cfg)}`) averaged in as a class (seed C).", "",
        per_class_table(systems, labels, _invalid_name(cfg)), "",
        "## Training", "", training_summary(train), "",
        "## Environmental impact", "", carbon_table(measurements, estimate), "",
        f"Measured in total: {_f(totals['energy_kwh'], 6)} kWh, {_f(totals['emissions_kg'], 6)} kg CO2eq "
        f"(codecarbon, offline). Lacoste et al. estimate: {_f(estimate['emissions_kg'], 4)} kg CO2eq.", "",
        "## Limitations and bias", "",
        "- A small model fine-tuned on a small sample: the numbers above are a pipeline check, not a "
        "state-of-the-art classifier. Do not use it to moderate content without human review.",
        "- Hate-speech labels are subjective and annotator-dependent; the datasets carry their annotators' "
        "biases, and errors fall unevenly across the targeted groups.",
        "- English only; social-media text of the training data's period and platforms. Performance drops on "
        "other domains, dialects (e.g. African-American English is known to be over-flagged) and on adversarial "
        "rewording.",
        "- Greedy answers that match no label count as wrong (`invalid`); score mode always returns a label.",
        "",
    ]
    return "\n".join(header + body)


def write_release(adapter_dir: str | Path, release_dir: str | Path, card: str) -> Path:
    """A copy of the adapter files + README.md (the model card) in `release_dir`, written atomically.

    The adapter folder itself is an output of the train stage: writing the card into it would change that
    output, and DVC would then consider train changed and rerun it. A separate release folder (an output of
    the report stage) keeps every stage's outputs its own.
    """
    adapter_dir = Path(adapter_dir)
    with atomic_path(release_dir) as tmp:
        shutil.copytree(adapter_dir, tmp, ignore=shutil.ignore_patterns("README.md"))
        (tmp / "README.md").write_text(card, encoding="utf-8")
    return Path(release_dir)


# ------------------------------------------------------------------------------------------ the report stage
def read_json(path: str | Path) -> Optional[dict]:
    path = Path(path)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_confusion(path: str | Path, labels: Sequence[str]) -> Optional[tuple]:
    """(names, counts) from a confusion.csv (actual,predicted per example), or None when missing."""
    from .metrics import confusion_counts

    path = Path(path)
    if not path.is_file():
        return None
    with open(path, encoding="utf-8", newline="") as f:
        pairs = [(r["actual"], r["predicted"]) for r in csv.DictReader(f)]
    return confusion_counts([a for a, _ in pairs], [p for _, p in pairs], labels) if pairs else None


def gather(cfg, metrics_root: str | Path = "metrics") -> dict:
    """Everything the report and the model card show, read from the other stages' outputs."""
    from . import carbon

    root = Path(metrics_root)
    split = cfg.eval.splits[0] if cfg.eval.splits else "test"
    labels = list(cfg.task.labels.names)
    systems = {name: (read_json(root / f"{key}.json") or {}).get(split) for name, key in SYSTEMS}
    measurements = carbon.read_stage_measurements(root / "carbon")
    measured = measured_totals(measurements)
    return {
        "split": split, "labels": labels, "systems": systems,
        "confusions": {name: read_confusion(root / key / split / "confusion.csv", labels) for name, key in SYSTEMS},
        "train": read_json(root / "train.json"), "data": read_json(root / "data.json"),
        "curves": read_curves(root / "train_curves"), "measurements": measurements,
        "estimate": carbon.estimate_from_config(cfg.carbon, measured["duration_s"] / 3600),
    }


def write_plots(facts: Mapping, out_dir: str | Path) -> List[str]:
    """loss.png, per_class_f1.png, confusion.png in `out_dir` (those there is data for); their paths."""
    out_dir = Path(out_dir)
    written = []
    if plot_loss_curves(facts["curves"], out_dir / "loss.png"):
        written.append(out_dir / "loss.png")
    present = {name: m for name, m in facts["systems"].items() if m}
    if present:
        plot_per_class_f1(present, facts["labels"], out_dir / "per_class_f1.png")
        written.append(out_dir / "per_class_f1.png")
    matrices = {name: cm for name, cm in facts["confusions"].items() if cm}
    if matrices:
        plot_confusions(matrices, out_dir / "confusion.png")
        written.append(out_dir / "confusion.png")
    return [str(p) for p in written]
