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


def scored_positions(labels):
    """The positions whose logits the loss needs: those whose next token is scored in some row (an index
    tensor; logit t predicts token t + 1). Collators pass it as `logits_to_keep`, so the model computes the
    vocab-wide output layer (the costliest single layer of a small model) only there, and the loss finds the
    same positions again from the labels alone."""
    import torch

    return torch.nonzero((labels[:, 1:] != IGNORE_INDEX).any(dim=0)).flatten()


class PaddingCollator:
    """Pads a batch to its longest example (dynamic padding), or to `pad_to` when given (for benchmarks).

    Left padding lines every answer up at the end of the batch, so the scored positions are few and shared.
    Rotary position embeddings are relative, so the shifted positions of a left-padded row change nothing
    (evaluation pads left too); a row's first token is never scored (nothing before it predicts it).
    """

    def __init__(self, pad_token_id: int, pad_to: Optional[int] = None):
        self.pad_token_id, self.pad_to = pad_token_id, pad_to

    def __call__(self, features: list[dict]) -> dict:
        import torch

        width = max(self.pad_to or 0, max(len(f["input_ids"]) for f in features))
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            ids[i, width - n:] = torch.tensor(f["input_ids"])
            labels[i, width - n + 1:] = torch.tensor(f["labels"][1:])
            mask[i, width - n:] = 1
        return {"input_ids": ids, "attention_mask": mask, "labels": labels, "logits_to_keep": scored_positions(labels)}


def shared_prefix_length(features: Sequence[Mapping]) -> int:
    """How many leading tokens all rows share, stopping before the token that predicts any row's first scored
    token (that logit must come from the row's own tokens) and leaving every row one token of its own."""
    ids = [f["input_ids"] for f in features]
    first_scored = [next((t for t in range(1, len(f["labels"])) if f["labels"][t] != IGNORE_INDEX),
                         len(f["labels"])) for f in features]
    limit = min(min(len(i) - 1 for i in ids), min(first_scored) - 1)
    n = 0
    while n < limit and all(i[n] == ids[0][n] for i in ids):
        n += 1
    return n


class PackedPrefixCollator:
    """Shared-prefix packing: the batch as ONE row, `[prefix][own_1][own_2]...[own_B]`, with no padding.

    The tokens every row starts with (the system turn and instruction: ~50 of a DynaHate prompt's ~89 tokens)
    are computed once instead of once per row. A block-causal 4D mask lets each row's own tokens see the prefix
    and themselves only, and position ids restart after the prefix for each row, so every row gets exactly the
    attention and positions it would get alone: the same loss and gradients as the padded batch, up to floating
    point (tests/test_sft_data.py). One forward pass pays the 4-bit layers' per-pass fixed cost once.
    With LoRA dropout > 0 the rows share one dropout mask on the prefix (the same expectation, more correlated
    noise); the default CPU recipe trains without dropout. The 4D boolean mask needs sdpa attention.
    Falls back to `fallback` (a PaddingCollator) when the shared prefix is shorter than `min_prefix` tokens or
    the batch has one row: e.g. loss on the whole sequence (seed C) leaves nothing unscored to share.
    """

    def __init__(self, pad_token_id: int, min_prefix: int = 8):
        self.fallback, self.min_prefix = PaddingCollator(pad_token_id), min_prefix

    def __call__(self, features: list[dict]) -> dict:
        import torch

        p = shared_prefix_length(features) if len(features) > 1 else 0
        if p < self.min_prefix:
            return self.fallback(features)
        ids, labels = list(features[0]["input_ids"][:p]), [IGNORE_INDEX] * p
        positions, segment = list(range(p)), [-1] * p
        for r, f in enumerate(features):
            ids += f["input_ids"][p:]
            labels += f["labels"][p:]
            positions += range(p, len(f["input_ids"]))
            segment += [r] * (len(f["input_ids"]) - p)
        seg = torch.tensor(segment)
        visible = torch.ones(len(ids), len(ids), dtype=torch.bool).tril() & ((seg[None, :] == -1) |
                                                                             (seg[None, :] == seg[:, None]))
        label_t = torch.tensor([labels])
        return {"input_ids": torch.tensor([ids]), "attention_mask": visible[None, None],
                "position_ids": torch.tensor([positions]), "labels": label_t,
                "logits_to_keep": scored_positions(label_t)}


def completion_loss(outputs, labels, num_items_in_batch=None):
    """Causal LM loss over the scored positions the collator kept (`scored_positions`): logit t predicts token
    t + 1. Summed and divided by `num_items_in_batch` (the scored tokens of the whole accumulated batch, as the
    Trainer counts them) when given, else the mean over this batch.
    """
    import torch.nn.functional as F

    logits = outputs["logits"]
    targets = labels[:, scored_positions(labels).to(labels.device) + 1].to(logits.device)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = (targets != IGNORE_INDEX).sum()
    if hasattr(num_items_in_batch, "to"):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch
