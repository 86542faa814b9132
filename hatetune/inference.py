"""Batched greedy generation and label scoring over many prompts: the work of the evaluate stage.

Speed comes from doing each piece of work once, with no per-example loop:
- the tokens every prompt starts with (system turn + instruction, ~3/4 of a DynaHate prompt) go through the
  model once; their key/value cache is shared by every batch (`SharedPrefix`, `eval.prefix_cache`);
- prompts are sorted by length, so a batch holds prompts of similar length and left padding wastes little;
- greedy decoding stops as soon as every prompt of a batch has produced EOS (labels are 1-3 tokens);
- score mode needs no decoding: one forward pass per batch, last position only, when the labels' first tokens
  differ (they do for DynaHate and MHS); otherwise each label's continuation (+ EOS) is scored in batched passes.
Results come back in input order. Keep the batch size fixed between runs you compare: in low precision a few
near-tied argmaxes depend on what else is in the batch (and on whether the prefix was computed separately).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, List, Mapping, Optional, Sequence

from .prompts import build_prompt


# --------------------------------------------------------------------------------------------- prompts
def encode_prompts(rows: Sequence[Mapping], prompt_cfg: Mapping, tokenizer) -> List[List[int]]:
    """Token ids of each row's prompt: `prompts.build_prompt` text, encoded by `training.encode_prompt`, i.e.
    exactly what the model was trained on (BOS only where the template does not write it itself)."""
    from .training import encode_prompt

    return [encode_prompt(build_prompt(row, prompt_cfg, tokenizer), prompt_cfg, tokenizer) for row in rows]


def length_sorted_batches(lengths: Sequence[int], batch_size: int, sort: bool = True) -> List[List[int]]:
    """Indices grouped into batches, shortest first (ties keep input order, so runs are repeatable)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i)) if sort else list(range(len(lengths)))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_left(batch: Sequence[Sequence[int]], pad_id: int):
    """input_ids, attention_mask and position_ids (as `generate` computes them) of a left-padded batch."""
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        if ids:
            input_ids[row, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids):] = 1
    return input_ids, attention_mask, (attention_mask.cumsum(-1) - 1).clamp(min=0)


def model_device(model):
    """Where the model's weights live (inputs go there; cuda when a GPU preset loaded it there)."""
    return next(model.parameters()).device


def shared_prefix_length(prompt_ids: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all prompts share, leaving every prompt at least one token of its own."""
    if not prompt_ids:
        return 0
    first, limit = prompt_ids[0], min(len(p) for p in prompt_ids) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompt_ids):
        n += 1
    return n


class SharedPrefix:
    """The key/value cache of the prompts' common leading tokens, computed once and reused by every batch.

    A batch is then [prefix][left padding][own tokens]: the padding sits in the middle, masked out, and the
    position ids continue from the prefix, so each row sees exactly the positions it would see unbatched.
    """

    def __init__(self, model, prompt_ids: Sequence[Sequence[int]], enabled: bool = True):
        import torch

        self.model, self.device = model, model_device(model)
        self.length = shared_prefix_length(prompt_ids) if enabled else 0
        self.ids = list(prompt_ids[0][:self.length]) if self.length else []
        self.kv = []
        if self.length:
            with torch.inference_mode():
                cache = model(input_ids=torch.tensor([self.ids], device=self.device), use_cache=True,
                              logits_to_keep=last_positions()).past_key_values
            self.kv = [(layer.keys, layer.values) for layer in cache.layers]

    def batch_inputs(self, batch_ids: Sequence[Sequence[int]], pad_id: int, for_generate: bool = False) -> dict:
        """Model inputs for a batch of full prompt ids (their shared prefix is replaced by the cache).

        `for_generate`: input_ids hold the prefix too (generate slices off what the cache covers) and no
        position ids (generate derives the same ones from the attention mask).
        """
        import torch
        from transformers import DynamicCache

        input_ids, attention_mask, position_ids = (t.to(self.device) for t in
                                                   pad_left([ids[self.length:] for ids in batch_ids], pad_id))
        if not self.length:
            return {"input_ids": input_ids, "attention_mask": attention_mask,
                    **({} if for_generate else {"position_ids": position_ids})}
        n = len(batch_ids)
        attention_mask = torch.cat([torch.ones((n, self.length), dtype=torch.long, device=self.device),
                                    attention_mask], dim=1)
        cache = DynamicCache([(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in self.kv],
                             config=self.model.config)
        if for_generate:
            prefix = torch.tensor([self.ids], dtype=torch.long, device=self.device).expand(n, -1)
            return {"input_ids": torch.cat([prefix, input_ids], dim=1), "attention_mask": attention_mask,
                    "past_key_values": cache}
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, self.length:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                "past_key_values": cache, "use_cache": True}


def last_positions(n: int = 1):
    """`logits_to_keep` selecting the last `n` positions as an index tensor, not an int.

    With an int the model slices `hidden[:, -n:, :]`, a non-contiguous view that torch's linear cannot fold
    into one matmul on CPU: it broadcasts the vocab projection into a [batch, hidden, vocab] copy (0.9 GB and
    ~1 s per batch for SmolLM2). An index tensor gathers a contiguous copy first; negative indices also work
    for generate's one-token decoding steps.
    """
    import torch

    return torch.arange(-n, 0)  # indexes the hidden states on any device (a CPU index tensor is accepted)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=not enabled, dynamic_ncols=True, mininterval=1.0)


# ------------------------------------------------------------------------------------------- labels
def label_token_ids(tokenizer, labels: Sequence[str]) -> List[List[int]]:
    """Each label as the model writes it after the prompt (no special tokens)."""
    ids = [tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]
    for label, token_ids in zip(labels, ids):
        if not token_ids:
            raise ValueError(f"label {label!r} tokenizes to nothing")
    return ids


def first_tokens_differ(label_ids: Sequence[Sequence[int]]) -> bool:
    firsts = [ids[0] for ids in label_ids]
    return len(set(firsts)) == len(firsts)


@dataclass
class Predictions:
    """Per-example results in input order, plus how long the model work took."""

    outputs: List[str]  # generated text (greedy) or the chosen label (score)
    labels: List[Optional[str]]  # the label scoring picks (None where not scored)
    seconds: float = 0.0
    log_probs: List[List[float]] = field(default_factory=list)  # score mode: one value per label


# ------------------------------------------------------------------------------------------- greedy
def generate_greedy(model, tokenizer, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
                    batch_size: int, labels: Optional[Sequence[str]] = None, sort: bool = True,
                    prefix_cache: bool = True, progress: bool = True, desc: str = "greedy") -> Predictions:
    """Greedy decoding of every prompt, batched, left-padded, stopping at EOS.

    With `labels` whose first tokens differ, the first decoding step's logits also give score mode's answer
    (`Predictions.labels`): the same forward pass, so greedy/score agreement costs nothing.
    """
    import torch

    start = time.perf_counter()
    eos_ids = _eos_ids(model, tokenizer)
    label_ids = label_token_ids(tokenizer, labels) if labels else None
    firsts = [ids[0] for ids in label_ids] if label_ids and first_tokens_differ(label_ids) else None
    outputs: List[str] = [""] * len(prompt_ids)
    scored: List[Optional[str]] = [None] * len(prompt_ids)
    prefix = SharedPrefix(model, prompt_ids, enabled=prefix_cache)
    with torch.inference_mode(), _progress(len(prompt_ids), desc, progress) as bar:
        for batch in length_sorted_batches([len(p) for p in prompt_ids], batch_size, sort):
            inputs = prefix.batch_inputs([prompt_ids[i] for i in batch], tokenizer.pad_token_id, for_generate=True)
            out = model.generate(**inputs, do_sample=False, num_beams=1, max_new_tokens=max_new_tokens,
                                 eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id,
                                 return_dict_in_generate=True, output_logits=firsts is not None,
                                 logits_to_keep=last_positions())
            texts = tokenizer.batch_decode(out.sequences[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            choice = out.logits[0][:, firsts].argmax(-1).tolist() if firsts is not None else None
            for j, i in enumerate(batch):
                outputs[i] = texts[j].strip()
                if choice is not None:
                    scored[i] = labels[choice[j]]
            bar.update(len(batch))
    return Predictions(outputs, scored, time.perf_counter() - start)


def _eos_ids(model, tokenizer) -> List[int]:
    """Every token that ends an answer: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return sorted(i for i in ids if i is not None)


# -------------------------------------------------------------------------------------------- score
def score_labels(model, tokenizer, prompt_ids: Sequence[Sequence[int]], labels: Sequence[str], batch_size: int,
                 sort: bool = True, prefix_cache: bool = True, progress: bool = True,
                 desc: str = "score") -> Predictions:
    """The most likely label of each prompt by log-likelihood: every example gets a real label.

    Labels with distinct first tokens: one forward pass per batch, last position only (log-softmax over the
    vocabulary, then the labels' first tokens compared). Otherwise each (prompt, label) pair is a sequence and
    the log-probabilities of the label's tokens + EOS are summed (EOS, so a label that is a prefix of another
    is not favoured).
    """
    import torch

    start = time.perf_counter()
    label_ids = label_token_ids(tokenizer, labels)
    if first_tokens_differ(label_ids):
        sequences, pairs, conts = list(prompt_ids), [(i, 0) for i in range(len(prompt_ids))], [[]]
    else:
        conts = [ids + [tokenizer.eos_token_id] for ids in label_ids]
        pairs = [(i, k) for i in range(len(prompt_ids)) for k in range(len(conts))]
        sequences = [list(prompt_ids[i]) + conts[k] for i, k in pairs]
    firsts = [ids[0] for ids in label_ids]
    log_probs = [[0.0] * len(labels) for _ in prompt_ids]
    prefix = SharedPrefix(model, sequences, enabled=prefix_cache)
    with torch.inference_mode(), _progress(len(prompt_ids), desc, progress) as bar:
        for batch in length_sorted_batches([len(s) for s in sequences], batch_size, sort):
            keep = max(len(conts[pairs[p][1]]) for p in batch) + 1
            inputs = prefix.batch_inputs([sequences[p] for p in batch], tokenizer.pad_token_id)
            logits = model(**inputs, logits_to_keep=last_positions(keep)).logits.float()
            all_log_probs = torch.log_softmax(logits, dim=-1)
            for j, p in enumerate(batch):
                i, k = pairs[p]
                if len(conts) == 1:  # first-token scoring: the last position predicts the answer's first token
                    log_probs[i] = all_log_probs[j, -1, firsts].tolist()
                    continue
                # position t predicts token t + 1: the continuation's n tokens are predicted by the n positions
                # before this (right-aligned) row's last one
                cont = conts[k]
                rows = all_log_probs[j, keep - 1 - len(cont): keep - 1]
                index = torch.tensor(cont, device=rows.device).unsqueeze(-1)
                log_probs[i][k] = float(rows.gather(-1, index).sum())
            bar.update(len(batch) / (len(conts) if len(conts) > 1 else 1))
    chosen = [labels[max(range(len(labels)), key=lambda k: row[k])] for row in log_probs]
    return Predictions(list(chosen), list(chosen), time.perf_counter() - start, log_probs)


# --------------------------------------------------------------------------------------------- floor
def forward_only_seconds(model, tokenizer, prompt_ids: Sequence[Sequence[int]], batch_size: int) -> float:
    """Time of one plain batched forward pass over the full prompts (length-sorted batches, no cache, last
    position's logits only): what any evaluation that reads every prompt token once must pay."""
    import torch

    start = time.perf_counter()
    with torch.inference_mode():
        for batch in length_sorted_batches([len(p) for p in prompt_ids], batch_size):
            input_ids, attention_mask, position_ids = (t.to(model_device(model)) for t in
                                                       pad_left([prompt_ids[i] for i in batch], tokenizer.pad_token_id))
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False,
                  logits_to_keep=last_positions())
    return time.perf_counter() - start


def predict(model, tokenizer, rows: Sequence[Mapping], prompt_cfg: Mapping, parse: Callable[[str], str],
            labels: Sequence[str], mode: str, max_new_tokens: int, batch_size: int, prefix_cache: bool = True,
            agreement: bool = True, progress: bool = True, desc: str = "") -> dict:
    """Evaluate Alpaca rows in `mode` (greedy | score).

    Returns {"outputs": raw model answers, "predicted": parsed labels, "other": the other mode's labels or
    None, "seconds": model time}. `agreement`: also get the other mode's labels (free in greedy mode when
    the labels' first tokens differ, an extra pass otherwise).
    """
    prompt_ids = encode_prompts(rows, prompt_cfg, tokenizer)
    kw = {"prefix_cache": prefix_cache, "progress": progress}
    desc = f"{desc} " if desc else ""
    if mode == "score":
        scored = score_labels(model, tokenizer, prompt_ids, labels, batch_size, desc=f"{desc}score", **kw)
        other, seconds = None, scored.seconds
        if agreement:
            greedy = generate_greedy(model, tokenizer, prompt_ids, max_new_tokens, batch_size, desc=f"{desc}greedy",
                                     **kw)
            other, seconds = [parse(t) for t in greedy.outputs], seconds + greedy.seconds
        return {"outputs": scored.outputs, "predicted": list(scored.labels), "other": other, "seconds": seconds}
    greedy = generate_greedy(model, tokenizer, prompt_ids, max_new_tokens, batch_size, labels=labels,
                             desc=f"{desc}greedy", **kw)
    other, seconds = (list(greedy.labels) if greedy.labels and greedy.labels[0] is not None else None), greedy.seconds
    if agreement and other is None and prompt_ids:
        scored = score_labels(model, tokenizer, prompt_ids, labels, batch_size, desc=f"{desc}score", **kw)
        other, seconds = list(scored.labels), seconds + scored.seconds
    return {"outputs": greedy.outputs, "predicted": [parse(t) for t in greedy.outputs], "other": other,
            "seconds": seconds}
