"""Report, plots, model card and release folder from metrics files alone (no model)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from support import ROOT
from hatetune import config, evaluation, model_card, paths, report
from hatetune.metrics import classification_metrics
from hatetune.parsing import INVALID

LABELS = ["hate", "not hate"]


def _system(gold, pred):
    return classification_metrics(gold, pred, LABELS)


GGUF_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.fixture
def metrics_root(tmp_path, monkeypatch):
    """What the upstream stages leave in metrics/ (three systems, training metrics and curves, carbon, data) and
    the sources stage's records, in a project folder that is the working directory."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "metrics"
    gold = ["hate"] * 6 + ["not hate"] * 4
    preds = {"eval": ["hate"] * 5 + ["not hate"] + ["not hate"] * 3 + ["hate"],
             "zeroshot": ["hate"] * 2 + [INVALID] * 4 + ["hate"] * 2 + [INVALID] * 2,
             "baseline": ["hate"] * 6 + ["hate"] * 2 + ["not hate"] * 2}
    for key, pred in preds.items():
        rows = [{"input": f"post {i}", "id": str(i)} for i in range(len(gold))]
        result = evaluation.score(rows, gold, pred, LABELS)
        evaluation.write_results(root / key, {"test": result}, run_info={}, title=key)
    (root / "train.json").write_text(json.dumps({"global_step": 80, "train_loss": 0.41, "eval_loss": 0.38,
                                                 "train_runtime_s": 300.5}))
    curves = root / "train_curves" / "plots" / "metrics"
    curves.mkdir(parents=True)
    (curves / "loss.tsv").write_text("timestamp\tstep\tloss\n1\t5\t2.1\n2\t10\t1.2\n3\t15\t0.6\n")
    (curves / "eval_loss.tsv").write_text("timestamp\tstep\teval_loss\n1\t10\t1.0\n2\t20\t0.7\n")
    carbon = root / "carbon"
    carbon.mkdir()
    for stage, seconds in [("train", 3000.0), ("evaluate", 600.0)]:
        (carbon / f"{stage}.json").write_text(json.dumps({"duration_s": seconds, "energy_kwh": seconds / 1e5,
                                                          "emissions_kg": seconds / 3e5, "tracking_mode": "machine",
                                                          "country_iso_code": "USA"}))
    (root / "data.json").write_text(json.dumps({"rows": {"train": 640, "dev": 200, "test": 10},
                                                "labels": {"test": {"hate": 6, "not hate": 4}}}))
    sources = {paths.data_source_file("dynahate"): {
        "kind": "mirror", "entry": "dynahate", "files": [{"path": "dynahate_v0.2.2_dev.csv", "sha256": "ab" * 32}],
        "instead_of": {"https": {"url": "https://example.org/dynahate_v0.2.3.csv", "sha256": None}}},
        paths.base_source_file("smollm2_135m_instruct"): {
        "kind": "gguf", "file": "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf", "sha256": GGUF_SHA,
        "copy_of": "HuggingFaceTB/SmolLM2-135M-Instruct"}}
    for path, content in sources.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    return root


def test_report_tables_plots_and_card(metrics_root, tmp_path):
    cfg = config.load([], ROOT / "params.yaml")
    facts = report.gather(cfg)
    assert facts["systems"]["fine-tuned"]["accuracy"] == 0.8
    assert facts["estimate"]["hours"] == 1.0  # 3600 measured seconds, carbon.hours is null
    assert set(facts["curves"]) == {"loss", "eval_loss"}

    plots = report.write_plots(facts, tmp_path / "plots")
    assert [Path(p).name for p in plots] == ["loss.png", "per_class_f1.png", "confusion.png"]
    first = {p: Path(p).read_bytes() for p in plots}
    assert all(b.startswith(b"\x89PNG") for b in first.values())
    report.write_plots(facts, tmp_path / "plots")  # the same numbers give the same bytes
    assert {p: Path(p).read_bytes() for p in plots} == first

    text = report.build_report(cfg, facts, plots)
    zs = facts["systems"]["zero-shot"]
    assert f"| zero-shot | 10 | {zs['accuracy']:.4f} | {zs['macro_f1']:.4f} | {zs['macro_f1_with_invalid']:.4f} |" \
        in text
    assert zs["macro_f1"] > zs["macro_f1_with_invalid"]  # invalid answers lower seed C's number
    assert "| train | 3000.0 |" in text and "Lacoste" in text and "| optimizer steps | 80 |" in text

    card = model_card.model_card(cfg, facts, example_prompt="<|im_start|>user\n<post>")
    # trained on the mirror's dequantised GGUF, not the Hub's weights: no `base_model:` claim, the file named
    assert card.startswith("---\nlibrary_name: peft\n") and "base_model:" not in card.split("\n---\n")[0]
    assert f"`smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf` (sha256 `{GGUF_SHA}`)" in card
    assert "dynahate_v0.2.2_dev.csv" in card and "instead of the configured upstream source" in card
    for section in ("Content warning", "## Model details", "## Training data", "## Prompt", "## Evaluation",
                    "## Environmental impact", "## Limitations and bias", "| test | 10 |", "r 8, alpha 16",
                    "macro-F1 (invalid averaged in, seed C)", "<post>"):
        assert section in card, section


def test_card_of_an_adapter_trained_on_hub_weights_names_the_commit(metrics_root):
    cfg = config.load([], ROOT / "params.yaml")
    paths.base_source_file(cfg.model.name).write_text(json.dumps(
        {"kind": "hub", "hub_id": cfg.model.hub_id, "revision": cfg.model.revision, "requested_revision": "main"}))
    card = model_card.model_card(cfg, report.gather(cfg))
    assert card.startswith(f"---\nbase_model: {cfg.model.hub_id}\n")
    assert f"at commit `{cfg.model.revision}`" in card


def test_release_copies_the_adapter_and_leaves_it_untouched(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    before = {p.name: p.read_bytes() for p in adapter.iterdir()}
    release = model_card.write_release(adapter, tmp_path / "release" / "dynahate", "# card\n")
    assert {p.name: p.read_bytes() for p in adapter.iterdir()} == before
    assert sorted(p.name for p in release.iterdir()) == ["README.md", "adapter_config.json",
                                                         "adapter_model.safetensors"]
    assert (release / "README.md").read_text() == "# card\n"


def test_missing_systems_show_as_dashes(tmp_path):
    table = report.results_table({"fine-tuned": None, "baseline": _system(["hate", "not hate"], ["hate", "hate"])})
    assert "| fine-tuned | – |" in table and "| baseline | 2 | 0.5000 |" in table
