"""The label decision: rows -> labels exactly as the evaluate stage decides them, for evaluation, the service and
the export.

`classify_rows` maps the config onto `inference.classify` (the task's prompt, labels and parser, eval.mode /
score_method / max_new_tokens / batch_size / prefix_cache, train.cutoff_len) and then, in score mode with
eval.calibration.method=threshold, applies the decision rule the evaluate stage fitted on dev (`apply_rule`:
temperature + threshold, hatetune.calibration). The evaluate stage fits the rule and calls `apply_rule`; the
service and the export read the fitted rule back (`decision_rule`) and pass it to `classify_rows`. So a label the
service returns or the export checks is the one evaluation gives the same row with the same model.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping, Optional, Sequence

from . import calibration, inference, parsing
from .errors import HatetuneError


def labels_of(cfg) -> list[str]:
    return list(cfg.task.labels.names)


def calibrated(cfg) -> bool:
    """Whether labels come from a dev-fitted decision rule rather than the plain argmax / parsed answer."""
    return cfg.eval.mode == "score" and cfg.eval.calibration.method == "threshold"


def classify_rows(model, tokenizer, rows: Sequence[Mapping], cfg, *, rule: Optional[Mapping] = None,
                  agreement: Optional[bool] = None, progress: bool = False, desc: str = "classify") -> dict:
    """`inference.classify` with the evaluate stage's settings, then `rule` (a fitted calibration, see
    `decision_rule`: pass it whenever `calibrated(cfg)`, else the labels are the plain argmax) when given; `agreement` (default eval.agreement) also runs the other mode, which never
    changes the predicted labels."""
    labels, ev = labels_of(cfg), cfg.eval
    parse = parsing.get_parser(cfg.task.parser, labels)
    run = inference.classify(model, tokenizer, rows, cfg.task.prompt, labels, parse, mode=ev.mode,
                             score_method=ev.score_method, max_new_tokens=ev.max_new_tokens,
                             batch_size=ev.batch_size, cutoff_len=cfg.train.cutoff_len,
                             prefix_cache=ev.prefix_cache,
                             agreement=ev.agreement if agreement is None else agreement,
                             progress=progress, desc=desc)
    return apply_rule(run, rule) if rule is not None else run


def apply_rule(run: dict, rule: Mapping) -> dict:
    """Score mode's labels under a fitted decision rule: `predicted` (and `outputs`) become the rule's labels,
    `p_positive` the calibrated P(positive label); `run` is changed and returned."""
    if not run.get("log_probs") and run["predicted"]:
        raise ValueError("a decision rule needs the label scores (eval.mode=score)")
    run["predicted"], run["p_positive"] = calibration.apply(rule, run["log_probs"] or [])
    run["outputs"] = run["predicted"]
    run["temperature"] = rule["temperature"]
    return run


def label_probabilities(run: Mapping, labels: Sequence[str]) -> list[Optional[dict]]:
    """Each row's {label: probability} as the decision sees them: the softmax of the label log-likelihoods at the
    rule's temperature (1 without a rule), rounded to 6 places; None where the run computed no label scores."""
    if not run.get("log_probs"):
        return [None] * len(run["predicted"])
    probs = calibration.probabilities(run["log_probs"], run.get("temperature", 1.0))
    return [dict(zip(labels, (round(float(p), 6) for p in row))) for row in probs]


def decision_rule(cfg, path: str | Path, adapter: Optional[Path] = None,
                  check_adapter: bool = True) -> Optional[dict]:
    """The fitted rule in `path` (a calibration.json) when the config calibrates (`calibrated`), else None.

    Checked, one clear error each: the file exists and is a rule for this task's labels (positive label among
    them, temperature > 0, threshold a number); with `check_adapter`, the evaluation run beside it (run.json) scored
    `adapter` (None: the base alone), so a rule fitted for another model is never applied."""
    if not calibrated(cfg):
        return None
    path = Path(path)
    where = "eval.calibration.method"
    if not path.is_file():
        raise HatetuneError("no decision rule fitted on dev here: run the evaluate stage for this model (dvc repro "
                            "evaluate), or set eval.calibration.method=none for the plain argmax",
                            file=str(path), field=where)
    try:
        rule = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise HatetuneError("not a decision rule: not UTF-8 text", file=str(path)) from None
    except json.JSONDecodeError as err:
        raise HatetuneError(f"not a decision rule: not JSON ({err.msg}, line {err.lineno})", file=str(path)) from None
    labels = labels_of(cfg)
    if not isinstance(rule, dict) or rule.get("labels") != labels or rule.get("positive") not in labels:
        got = rule.get("labels") if isinstance(rule, dict) else type(rule).__name__
        raise HatetuneError(f"the rule is for labels {got}, not this task's {labels}: rerun the evaluate stage",
                            file=str(path), field="labels")
    for key, low in (("temperature", 0.0), ("threshold", None)):
        value = rule.get(key)
        if (not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
                or (low is not None and value <= low)):
            raise HatetuneError(f"must be a finite number{' > 0' if low is not None else ''}, got {value!r}",
                                file=str(path), field=key)
    if check_adapter:
        run_file = path.parent / "run.json"
        scored = json.loads(run_file.read_text(encoding="utf-8")).get("adapter") if run_file.is_file() else "?"
        same = (scored is None and adapter is None) or (
            scored not in (None, "?") and adapter is not None and Path(scored).resolve() == Path(adapter).resolve())
        if not same:
            raise HatetuneError(f"this rule was fitted for adapter {scored} (its run.json), not for "
                                f"{adapter if adapter is not None else 'the base model alone'}: rerun the evaluate "
                                "stage for this model, or name its calibration.json", file=str(path), field=where)
    return rule
