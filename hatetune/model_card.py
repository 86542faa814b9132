"""The model card (README.md of the released adapter, Hugging Face style) and the release folder.

The card names what was actually used, read from the `sources` stage's records: the base weights (e.g. the
offline mirror's Q4_1 GGUF of SmolLM2, dequantised, not the Hub's bf16 weights) and the data files (e.g. the
mirror's DynaHate v0.2.2 dev file, re-split, not the configured v0.2.3 release).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Mapping, Optional

from .io import atomic_path
from .report import (carbon_table, fmt, hyperparameters, invalid_name, measured_totals, per_class_table,
                     results_table, split_sizes_table, training_summary)
from .sources import describe as describe_data


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


def base_weights_note(base_source: Optional[Mapping]) -> str:
    """Which weights the adapter was trained on, and what that means for loading it elsewhere."""
    if not base_source:
        return "Base weights: not recorded (no models/base source record)."
    if base_source["kind"] == "gguf":
        return (f"Base weights: the offline mirror's `{base_source['file']}` (sha256 `{base_source['sha256']}`), a "
                f"GGUF quantisation of {base_source['copy_of']}, dequantised to bf16 by the base_model stage. The "
                f"adapter was trained on those weights, not on the Hub's bf16 weights: load it on the same "
                f"dequantised folder to get the numbers below.")
    if base_source["kind"] == "hub":
        return f"Base weights: {base_source['hub_id']} at commit `{base_source['revision']}` (Hugging Face Hub)."
    return f"Base weights: the local folder `{base_source['path']}`."


def data_note(data_source: Optional[Mapping], cfg) -> str:
    if not data_source:
        return f"Data: task `{cfg.task.name}` (source not recorded)."
    note = f"Data: {describe_data(data_source)}"
    if data_source["kind"] == "mirror":
        upstream = next(iter(data_source["instead_of"].values()))
        configured = upstream.get("url") or upstream.get("repo_id") or upstream.get("path")
        note += f", used instead of the configured upstream source ({configured})"
    return note + f"; split strategy `{cfg.task.split.strategy}`."


def model_card(cfg, facts: Mapping, example_prompt: Optional[str] = None) -> str:
    """README.md of the released adapter, in Hugging Face model-card style (YAML header + sections).

    `facts`: what `report.gather` read (results, training, carbon, data and the recorded sources).
    """
    split, systems, train, data = facts["split"], facts["systems"], facts["train"], facts["data"]
    measurements, estimate, base_source = facts["measurements"], facts["estimate"], facts.get("base_source")
    labels = list(cfg.task.labels.names)
    on_hub_weights = bool(base_source) and base_source["kind"] == "hub"
    header = ["---"] + ([f"base_model: {cfg.model.hub_id}"] if on_hub_weights else []) + [
        "library_name: peft", "pipeline_tag: text-generation", "tags:", "- peft", "- lora", "- qlora",
        "- hate-speech-detection", "- text-classification", "- hatetune"]
    if cfg.task.source.repo_id and (facts.get("data_source") or {}).get("kind") == "hub":
        header += ["datasets:", f"- {cfg.task.source.repo_id}"]
    header += ["language:", "- en", "---", ""]
    totals = measured_totals(measurements)
    body = [
        f"# {cfg.model.name} QLoRA adapter for {cfg.task.name} hate-speech classification", "",
        "> **Content warning**: this model and its data concern hate speech. Examples, predictions and the "
        "dataset contain offensive, slurring and hateful language.", "",
        f"A LoRA adapter for {cfg.model.hub_id} that answers with one label: "
        f"{', '.join(f'`{label}`' for label in labels)}. Trained and evaluated with hatetune (a DVC pipeline: "
        "`dvc repro` reproduces this folder).", "",
        base_weights_note(base_source), "",
        "## Model details", "", _kv_table(hyperparameters(cfg, base_source)), "",
        "## Training data", "",
        data_note(facts.get("data_source"), cfg), "",
        split_sizes_table(data), "",
        *([f"> {w}" for w in (data or {}).get("warnings") or []] + [""]),
        "## Prompt", "", _prompt_block(cfg, example_prompt), "",
        "## Usage", "", "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{cfg.model.hub_id}")  # or the folder the adapter was '
        "trained on (see Base weights)",
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
        f"(`{invalid_name(cfg)}`) averaged in as a class (seed C).", "",
        per_class_table(systems, labels, invalid_name(cfg)), "",
        "## Training", "", training_summary(train), "",
        "## Environmental impact", "", carbon_table(measurements, estimate), "",
        f"Measured in total: {fmt(totals['energy_kwh'], 6)} kWh, {fmt(totals['emissions_kg'], 6)} kg CO2eq "
        f"(codecarbon, offline). Lacoste et al. estimate: {fmt(estimate['emissions_kg'], 4)} kg CO2eq.", "",
        "## Limitations and bias", "",
        "- A small model fine-tuned on a small sample: the numbers above are a pipeline check, not a "
        "state-of-the-art classifier. Do not use it to moderate content without human review.",
        "- Hate-speech labels are subjective and annotator-dependent; the datasets carry their annotators' "
        "biases, and errors fall unevenly across the targeted groups.",
        "- English only; social-media text of the training data's period and platforms. Performance drops on "
        "other domains, dialects (e.g. African-American English is known to be over-flagged) and on adversarial "
        "rewording.",
        "- Greedy answers that match no label count as wrong (`invalid`); score mode always returns a label.",
        *measured_unevenness(facts),
        "",
    ]
    return "\n".join(header + body)


def measured_unevenness(facts: Mapping) -> list[str]:
    """Limitations measured on this adapter: its accuracy gap between target groups, its weakest functionality."""
    found = []
    gap = (facts["systems"].get("fine-tuned") or {}).get("group_gap") or {}
    if gap.get("accuracy_gap") is not None:
        found.append(f"- Measured on the `{facts['split']}` split, accuracy ranges from {gap['worst_accuracy']:.2f} "
                     f"({gap['worst_group']}, n {gap['worst_n']}) to {gap['best_accuracy']:.2f} ({gap['best_group']}, "
                     f"n {gap['best_n']}) across {gap['breakdown']} groups; small groups make these numbers rough.")
    worst = ((facts.get("suite_systems") or {}).get("fine-tuned") or {}).get("worst_functionality") or {}
    if worst.get("name"):
        found.append(f"- On the {facts['suite']} functional tests its weakest functionality is `{worst['name']}` "
                     f"(accuracy {worst['accuracy']:.2f}).")
    return found


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


