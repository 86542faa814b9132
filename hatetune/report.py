"""The report stage's reading and writing: tables of the three systems, training and energy summaries, and
metrics/report.md; the facts it shows are gathered from the other stages' outputs.

Everything here is a pure function of metrics dicts and config (no model), so the report stage and the tests
need nothing but files. The model card is in `hatetune.model_card`, the PNGs in `hatetune.plots`.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from . import paths
from .model_sources import describe as describe_base
from .parsing import INVALID, SEED_C_INVALID_NAME
from .plots import plot_confusions, plot_heatmap, plot_loss_curves, plot_per_class_f1
from .report_groups import functional_section, groups_section, heatmap_data

SYSTEMS = (("fine-tuned", paths.EVAL), ("zero-shot", paths.ZEROSHOT), ("TF-IDF + LR baseline", paths.BASELINE))


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


# ------------------------------------------------------------------------------------------------ tables
def fmt(x, digits: int = 4) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def invalid_name(cfg) -> str:
    return f"{INVALID} (seed C: {SEED_C_INVALID_NAME})" if cfg.task.parser == "mhs_substring" else INVALID


def results_table(systems: Mapping[str, Optional[Mapping]]) -> str:
    """Markdown: one row per system ({name: metrics of one split or None when missing})."""
    lines = ["| system | n | accuracy | macro-F1 (real labels) | macro-F1 (invalid averaged in, seed C) | "
             "invalid rate |", "|---|---:|---:|---:|---:|---:|"]
    for name, m in systems.items():
        if m is None:
            lines.append(f"| {name} | – | – | – | – | – |")
            continue
        lines.append(f"| {name} | {m['n']} | {fmt(m['accuracy'])} | {fmt(m['macro_f1'])} | "
                     f"{fmt(m['macro_f1_with_invalid'])} | {m['invalid_rate']:.2%} |")
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
        lines.append(f"| {stage} | {fmt(m.get('duration_s'), 1)} | {fmt(m.get('energy_kwh'), 6)} | "
                     f"{fmt(m.get('emissions_kg'), 6)} | codecarbon ({m.get('tracking_mode') or 'measured'}, "
                     f"{m.get('country_iso_code') or '?'}) |")
    total = measured_totals(measurements)
    lines.append(f"| **all measured** | {fmt(total['duration_s'], 1)} | {fmt(total['energy_kwh'], 6)} | "
                 f"{fmt(total['emissions_kg'], 6)} | sum |")
    lines.append(f"| Lacoste et al. estimate | {fmt(estimate['hours'] * 3600, 1)} | {fmt(estimate['energy_kwh'], 6)} | "
                 f"{fmt(estimate['emissions_kg'], 6)} | {estimate['hours']:g} h x {estimate['device_power_w']:g} W "
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
def hyperparameters(cfg, base_source: Optional[Mapping] = None) -> Dict[str, object]:
    from .config import lora_alpha

    q = cfg.model.quantization
    tr = cfg.train
    return {
        "base model": describe_base(base_source) if base_source else f"{cfg.model.hub_id} @ {cfg.model.revision}",
        "chat template": cfg.model.chat_template or "the tokenizer's own",
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
        "evaluation": (f"{cfg.eval.mode} (score method {cfg.eval.score_method}), max {cfg.eval.max_new_tokens} "
                       f"new tokens, batch {cfg.eval.batch_size}, parser {cfg.task.parser}"),
        "seed": cfg.seed,
    }


def split_sizes_table(data: Optional[Mapping]) -> str:
    if not data or "rows" not in data:
        return f"Split sizes unknown ({paths.DATA_METRICS.as_posix()} missing)."
    rows = data["rows"]
    labels = data.get("labels", {})
    lines = ["| split | rows | labels |", "|---|---:|---|"]
    for split in ("train", "dev", "test"):
        if split in rows:
            counts = ", ".join(f"{k} {v}" for k, v in labels.get(split, {}).items())
            lines.append(f"| {split} | {rows[split]} | {counts} |")
    return "\n".join(lines)


# How each eval.calibration.objective chooses the threshold, in the report's words.
OBJECTIVES = {"prevalence": "flagging as many dev posts as are positive", "macro_f1": "for the best dev macro-F1",
              "precision": "the lowest reaching the target precision"}


def decision_rule_section(calibrations: Mapping[str, Optional[Mapping]], dev_systems: Mapping) -> list[str]:
    """How score mode decided: each system's threshold and temperature fitted on dev, and its dev results."""
    fitted = {name: rule for name, rule in calibrations.items() if rule}
    if not fitted:
        return []
    lines = ["### Decision rule (score mode)", "",
             "Each label's log-likelihood (answer + EOS) becomes a probability (softmax at a temperature fitted on the "
             "dev split); the positive label wins when its probability reaches a threshold chosen on dev "
             f"({OBJECTIVES.get(next(iter(fitted.values()))['objective'], '?')}). The same rule labels the test split and "
             "the service's requests (`calibration.json` beside each system's results).", "",
             "| system | threshold on P(positive) | temperature | dev macro-F1 at the threshold |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | P({rule['positive']}) >= {rule['threshold']:.4f} | {rule['temperature']:g} | "
              f"{rule['dev']['macro_f1']:.4f} |" for name, rule in fitted.items()]
    if any(dev_systems.values()):
        lines += ["", "Dev split (where the thresholds were fitted, and recipes are compared):", "",
                  results_table(dev_systems)]
    return lines + [""]


def build_report(cfg, facts: Mapping, plots: Sequence[str]) -> str:
    """metrics/report.md: results of the three systems, training summary, energy and emissions, plots."""
    split, systems, train, data = facts["split"], facts["systems"], facts["train"], facts["data"]
    measurements, estimate = facts["measurements"], facts["estimate"]
    labels = list(cfg.task.labels.names)
    warnings = (data or {}).get("warnings") or []
    out = [f"# hatetune report: {cfg.task.name} / {cfg.model.name}", "",
           f"Test set: `{split}` split of `{paths.processed_dir(cfg.task.name).as_posix()}/`. Fine-tuned and zero-shot use the same "
           f"prompts, decoding ({cfg.eval.mode}, max {cfg.eval.max_new_tokens} new tokens) and parser "
           f"(`{cfg.task.parser}`); an unparseable answer is `{invalid_name(cfg)}` and counts as wrong.", ""]
    out += [f"> Note: {w}" for w in warnings] + ([""] if warnings else [])
    heatmap = next((p for p in plots if Path(p).name == paths.FUNCTIONAL_HEATMAP.name), None)
    out += ["## Results", "", results_table(systems), "",
            *decision_rule_section(facts.get("calibrations") or {}, facts.get("dev_systems") or {}),
            "macro-F1 (real labels): averaged over the task's labels (seed B's `labels=`). "
            "macro-F1 (invalid averaged in): scikit-learn's default label set, so `invalid` (F1 0) joins the "
            "average whenever it was predicted — seed C's published convention.", "",
            "### Per class", "", per_class_table(systems, labels, invalid_name(cfg)), "",
            *groups_section(split, facts.get("groups") or {}, systems, cfg.task.breakdowns.gap),
            *functional_section(facts.get("suite") or "", facts.get("suite_systems") or {},
                                facts.get("suite_groups") or {}, facts.get("suite_info"),
                                _relative(heatmap) if heatmap else None),
            "## Training", "", training_summary(train), "",
            "## Energy and emissions", "", carbon_table(measurements, estimate), "",
            "Measured: codecarbon's offline tracker per stage (without RAPL or GPU counters it estimates power from "
            "CPU load and RAM). Estimate: Lacoste et al. (2019), with the `carbon` config "
            f"({estimate.get('hours_source', 'config')}).", "",
            "## Plots", ""]
    out += [f"![{Path(p).stem}]({_relative(p)})" for p in plots if p != heatmap]
    return "\n".join(out) + "\n"


def _relative(plot: str) -> str:
    """A plot's path relative to report.md's folder (links in the report)."""
    return Path(os.path.relpath(Path(plot).resolve(), paths.REPORT_MD.parent.resolve())).as_posix()


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


def gather(cfg) -> dict:
    """Everything the report and the model card show, read from the other stages' outputs."""
    from . import carbon

    split = "test" if "test" in cfg.eval.splits else cfg.eval.splits[-1]  # dev, when listed, is for fitting
    labels = list(cfg.task.labels.names)
    results = {name: read_json(paths.results_json(paths.results_base(key))) or {} for name, key in SYSTEMS}
    systems = {name: r.get(split) for name, r in results.items()}
    measurements = carbon.read_stage_measurements(paths.CARBON_DIR)
    measured = measured_totals(measurements)
    return {
        "split": split, "labels": labels, "systems": systems,
        "confusions": {name: read_confusion(paths.confusion_csv(key, split), labels) for name, key in SYSTEMS},
        "train": read_json(paths.TRAIN_METRICS), "data": read_json(paths.DATA_METRICS),
        "curves": read_curves(paths.TRAIN_CURVES), "measurements": measurements,
        "estimate": carbon.estimate_from_config(cfg.carbon, measured["duration_s"] / 3600),
        "data_source": read_json(paths.data_source_file(cfg.task.name)),
        "base_source": read_json(paths.base_source_file(cfg.model.name)),
        "dev_systems": {name: r.get("dev") for name, r in results.items()} if split != "dev" else {},
        "calibrations": {name: read_json(paths.calibration_file(paths.results_base(key)))
                         for name, key in SYSTEMS if key != paths.BASELINE},
        "calibration_plots": [str(p) for p in (paths.results_base(paths.EVAL) / name for name in
                                               (paths.PR_CURVE_FILE, paths.RELIABILITY_FILE)) if p.is_file()],
        **gather_groups(cfg, split, results),
    }


def gather_groups(cfg, split: str, results: Mapping[str, Mapping]) -> dict:
    """Each system's results per group on `split` and, when a functional suite was scored, on the suite."""
    def groups(name: str) -> dict:
        return {system: read_json(paths.results_base(key) / name / paths.GROUPS_FILE) for system, key in SYSTEMS}

    found = {"groups": groups(split)}
    suite = cfg.eval.functional.source.name if cfg.eval.functional.enabled else None
    if suite and any(suite in r for r in results.values()):
        found.update(suite=suite, suite_systems={name: r.get(suite) for name, r in results.items()},
                     suite_groups=groups(suite),
                     suite_info=read_json(paths.FUNCTIONAL_DIR / paths.FUNCTIONAL_SUMMARY))
    return found


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
    grid = heatmap_data(facts.get("suite_groups") or {}, (facts.get("suite_info") or {}).get("order"))
    if grid:
        plot_heatmap(*grid, out_dir / paths.FUNCTIONAL_HEATMAP.name, f"{facts['suite']}: accuracy per functionality")
        written.append(out_dir / paths.FUNCTIONAL_HEATMAP.name)
    return [str(p) for p in written]
