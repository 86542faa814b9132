"""Supervised fine-tuning data: rows -> token ids with prompt masking, dynamic padding, the completion loss.

Prompts and answers are tokenised by `hatetune.prompts` (the one place prompts are built) and truncated by its
`fit_to_cutoff`, the rule evaluation applies too. Length grouping is the Trainer's own sampler
(`train.group_by_length`), which reads each example's `input_ids` length.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from .errors import HatetuneError
from .prompts import encode_row, fit_to_cutoff

IGNORE_INDEX = -100  # label of tokens that do not count in the loss
REQUIRED_KEYS = ("instruction", "input", "output")


def encode_example(row: Mapping[str, Any], prompt_cfg: Mapping[str, Any], tokenizer, cutoff_len: int,
                   loss_on: str = "completion") -> tuple[dict, bool]:
    """One Alpaca row -> {input_ids, labels} and whether it was truncated to `cutoff_len`.

    The answer (as the template writes it, EOS included) is kept whole; an over-long prompt is cut by
    `prompts.fit_to_cutoff`. Labels are -100 on the prompt unless loss_on == "all" (seed C).
    """
    prompt_ids, answer_ids = encode_row(row, prompt_cfg, tokenizer)
    answer_ids = answer_ids[:cutoff_len]
    prompt_ids, truncated = fit_to_cutoff(prompt_ids, len(answer_ids), cutoff_len)
    prompt_labels = list(prompt_ids) if loss_on == "all" else [IGNORE_INDEX] * len(prompt_ids)
    return {"input_ids": prompt_ids + answer_ids, "labels": prompt_labels + answer_ids}, truncated


def encode_rows(rows: Sequence[Mapping[str, Any]], prompt_cfg, tokenizer, cutoff_len: int, loss_on: str,
                source: str = "<rows>") -> tuple[list[dict], int]:
    """Encode every row (see `encode_example`); return the examples and how many were truncated.

    A row without instruction / input / output fails with the file, row (1-based line) and field.
    """
    examples, truncated = [], 0
    for i, row in enumerate(rows, start=1):
        for key in REQUIRED_KEYS:
            if not isinstance(row.get(key), str):
                raise HatetuneError("missing or not a string", file=source, row=i, field=key)
        if not row["output"]:
            raise HatetuneError("empty answer: nothing to learn", file=source, row=i, field="output")
        example, cut = encode_example(row, prompt_cfg, tokenizer, cutoff_len, loss_on)
        examples.append(example)
        truncated += cut
    return examples, truncated


class ListDataset:
    """A map-style dataset over a list of encoded examples (the Trainer reads lengths from input_ids)."""

    def __init__(self, examples: list[dict]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        return self.examples[i]


class PaddingCollator:
    """Pads a batch to its longest example (dynamic padding), or to `pad_to` when given (for benchmarks).

    Left padding lines every answer up at the end of the batch, so with `trim_logits` the model computes logits
    (a vocab-wide matmul, the costliest single layer of a small model) only for the last `logits_to_keep`
    positions: from the token before the earliest answer to the end. Rotary position embeddings are relative,
    so the shifted positions of a left-padded row change nothing; evaluation pads left too.
    """

    def __init__(self, pad_token_id: int, pad_to: Optional[int] = None, trim_logits: bool = True):
        self.pad_token_id, self.pad_to, self.trim_logits = pad_token_id, pad_to, trim_logits

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(self.pad_to or 0, max(len(f["input_ids"]) for f in features))
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, width - n:] = torch.tensor(f["input_ids"])
            labels[i, width - n:] = torch.tensor(f["labels"])
            labels[i, width - n] = IGNORE_INDEX  # a row's first token has nothing before it to be predicted from
            mask[i, width - n:] = 1
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if self.trim_logits:
            scored = (labels != IGNORE_INDEX).any(dim=0).nonzero()
            first = int(scored[0]) if len(scored) else width - 1
            batch["logits_to_keep"] = min(width, width - first + 1)
        return batch


def completion_loss(outputs, labels, num_items_in_batch=None):
    """Causal LM loss over the last `logits.shape[1]` positions (see PaddingCollator.trim_logits).

    Logit t predicts token t + 1. Summed and divided by `num_items_in_batch` (the scored tokens of the whole
    accumulated batch, as the Trainer counts them) when given, else the mean over this batch.
    """
    import torch.nn.functional as F

    logits = outputs["logits"]
    kept = logits.shape[1]
    targets = labels[:, labels.shape[1] - kept + 1:].to(logits.device)
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = (targets != IGNORE_INDEX).sum()
    if hasattr(num_items_in_batch, "to"):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch
