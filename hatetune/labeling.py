"""The label decision: rows -> labels exactly as the evaluate stage decides them, for the service and the export.

One call, `classify_rows`, maps the config onto `inference.classify` (the task's prompt, labels and parser,
eval.mode / score_method / max_new_tokens / batch_size / prefix_cache, train.cutoff_len), so a label the
service returns or the export checks is the one evaluation would give the same row with the same model.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

from . import inference, parsing


def labels_of(cfg) -> list[str]:
    return list(cfg.task.labels.names)


def classify_rows(model, tokenizer, rows: Sequence[Mapping], cfg, *, agreement: Optional[bool] = None,
                  progress: bool = False, desc: str = "classify") -> dict:
    """`inference.classify` with the evaluate stage's settings; `agreement` (default eval.agreement) also runs
    the other mode, which never changes the predicted labels."""
    labels, ev = labels_of(cfg), cfg.eval
    parse = parsing.get_parser(cfg.task.parser, labels)
    return inference.classify(model, tokenizer, rows, cfg.task.prompt, labels, parse, mode=ev.mode,
                              score_method=ev.score_method, max_new_tokens=ev.max_new_tokens,
                              batch_size=ev.batch_size, cutoff_len=cfg.train.cutoff_len,
                              prefix_cache=ev.prefix_cache,
                              agreement=ev.agreement if agreement is None else agreement,
                              progress=progress, desc=desc)


def label_scores(run: Mapping, labels: Sequence[str]) -> list[Optional[dict]]:
    """Each row's {label: log-likelihood of its answer + EOS} (rounded as evaluate's records), None where the
    run computed no scores."""
    if not run.get("log_probs"):
        return [None] * len(run["predicted"])
    return [dict(zip(labels, (round(v, 4) for v in row))) for row in run["log_probs"]]
