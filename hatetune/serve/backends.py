"""Backends behind one small interface: `label(texts) -> [Labelled]`, `healthy()`, `identity`.

- `transformers` (default): the base model + adapter in this process, loaded as the evaluate stage loads them;
  texts are labelled by `labeling.classify_rows`, the evaluate stage's decision (prompt, truncation, greedy or
  label scoring, batch size, and in score mode the decision rule the evaluate stage fitted on dev: temperature +
  threshold, read from its calibration.json), so a served label is the label evaluation gives the same post.
- `ollama`, `openai`: a model served elsewhere (the export in Ollama; vLLM or llama.cpp's server), see `remote`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .. import labeling, models, paths, prompts
from ..errors import HatetuneError
from ..io import sha256_file
from ..model_sources import SOURCE_FILE


@dataclass(frozen=True)
class Labelled:
    label: str
    scores: Optional[dict]  # {label: probability the decision sees (calibrated temperature)}; None: not computed
    truncated: bool  # the prompt was cut to train.cutoff_len, as evaluation cuts it


class BackendUnavailable(Exception):
    """The model server cannot be reached or answers wrongly (answered 503, never 500)."""

    expected = True  # the batcher logs no traceback for it


def adapter_path(cfg) -> Optional[Path]:
    """serve.adapter: `trained` -> the train stage's adapter, null -> none, else the folder given."""
    if cfg.serve.adapter is None:
        return None
    return paths.adapter_dir(cfg.task.name) if cfg.serve.adapter == "trained" else Path(cfg.serve.adapter)


def model_identity(cfg) -> str:
    """`<model name>@<what the base weights are>`: the mirror GGUF's sha256 or the Hub commit (short)."""
    source_file = paths.base_model_dir(cfg.model.name) / SOURCE_FILE
    if not source_file.is_file():
        return cfg.model.name
    source = json.loads(source_file.read_text(encoding="utf-8"))
    pin = source.get("sha256") or source.get("revision") or source.get("path") or "?"
    return f"{cfg.model.name}@{pin[:12] if source['kind'] != 'local' else pin}"


def adapter_identity(adapter: Optional[Path]) -> Optional[str]:
    """`<folder>@<sha256 of its weights, short>`: a retrained adapter in the same folder is told apart."""
    if adapter is None:
        return None
    weights = adapter / "adapter_model.safetensors"
    return f"{adapter}@{sha256_file(weights)[:12]}" if weights.is_file() else str(adapter)


def served_rule(cfg, adapter: Optional[Path]) -> Optional[dict]:
    """The decision rule the served model's labels go through, as in evaluation (None unless eval.mode=score with
    eval.calibration.method=threshold): serve.calibration when set, else the one the evaluate stage fitted for
    this model, metrics/eval/calibration.json (metrics/zeroshot/ with serve.adapter=null), checked to be for it."""
    if cfg.serve.calibration is not None:
        return labeling.decision_rule(cfg, cfg.serve.calibration, check_adapter=False)
    results = paths.results_base(paths.EVAL if adapter is not None else paths.ZEROSHOT)
    return labeling.decision_rule(cfg, paths.calibration_file(results), adapter)


def rule_identity(rule: Optional[dict]) -> Optional[str]:
    """`P(hate) >= 0.4321 at T=1.234` (None without a rule)."""
    if rule is None:
        return None
    return f"P({rule['positive']}) >= {rule['threshold']:g} at T={rule['temperature']:g}"


def load_tokenizer(cfg, adapter: Optional[Path]):
    """The tokenizer evaluation uses: the adapter's (it carries the training chat template), else the base's."""
    folder = adapter if adapter is not None and adapter.is_dir() else paths.base_model_dir(cfg.model.name)
    return models.load_tokenizer(folder, cfg.model, padding_side="left")


class TransformersBackend:
    name = "transformers"

    def __init__(self, cfg, model, tokenizer, identity: dict, rule: Optional[dict] = None):
        self.cfg, self.model, self.tokenizer, self.identity, self.rule = cfg, model, tokenizer, identity, rule
        self.labels = labeling.labels_of(cfg)

    @classmethod
    def load(cls, cfg) -> "TransformersBackend":
        """Base + adapter loaded as the evaluate stage loads them (4-bit unless eval.unquantized_base)."""
        adapter = adapter_path(cfg)
        if adapter is not None and not (adapter / "adapter_config.json").is_file():
            raise HatetuneError("no LoRA adapter here: run the train stage (dvc repro train), or set "
                                "serve.adapter=null to serve the base model", file=str(adapter), field="serve.adapter")
        rule = served_rule(cfg, adapter)  # before loading the model: a missing rule is one quick error
        base_dir = paths.base_model_dir(cfg.model.name)
        tokenizer = load_tokenizer(cfg, adapter)
        model = models.load_model(cfg.model, base_dir, quantize=not cfg.eval.unquantized_base, adapter_dir=adapter)
        identity = {"backend": cls.name, "model": model_identity(cfg), "adapter": adapter_identity(adapter),
                    "decision_rule": rule_identity(rule)}
        return cls(cfg, model, tokenizer, identity, rule)

    def label(self, texts: List[str]) -> List[Labelled]:
        rows = [prompts.input_row(text, self.cfg.task.prompt) for text in texts]
        run = labeling.classify_rows(self.model, self.tokenizer, rows, self.cfg, rule=self.rule)
        scores = labeling.label_probabilities(run, self.labels)
        return [Labelled(label, score, bool(cut))
                for label, score, cut in zip(run["predicted"], scores, run["truncated"])]

    def healthy(self) -> bool:
        return True  # in-process: it answers when the batcher does


def create_backend(cfg):
    """The backend serve.backend names, ready to label."""
    if cfg.serve.backend == "transformers":
        return TransformersBackend.load(cfg)
    from .remote import REMOTE_BACKENDS

    backend_class = REMOTE_BACKENDS[cfg.serve.backend]
    backend_class.check_config(cfg)  # before loading anything
    return backend_class(cfg, load_tokenizer(cfg, adapter_path(cfg)))
