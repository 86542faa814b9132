"""Batched greedy generation and label scoring over many prompts: the work of the evaluate stage and the service.

Each piece of work is done once, with no per-example loop:
- the tokens every prompt starts with (system turn + instruction, ~3/4 of a DynaHate prompt) go through the
  model once; their key/value cache is shared by every batch (`SharedPrefix`, `eval.prefix_cache`);
- prompts are sorted by length, so a batch holds prompts of similar length and left padding wastes little;
- one prompt pass per batch serves both modes: its last logits give every label's first-token log-probability
  and the first greedy token; the labels' remaining tokens (+ EOS) are scored in one more pass over the cached
  prompts (each label a row), and greedy decoding continues from the same cache until every row wrote EOS.
Results come back in input order. Greedy decoding is plain argmax (no penalties); sampled decoding (`Sampling`:
temperature, top_p) continues from the same prompt pass, each prompt drawing from its own generator seeded with
(seed, its index), so a reply does not depend on the batch it lands in. Keep the batch size fixed between runs you
compare: in low precision a few near-tied argmaxes (and draws) depend on the batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import List, Mapping, Optional, Sequence

from .errors import HatetuneError
from .prompts import PROBE_ANSWER, answer_length, encode_prompt, encode_row, fit_to_cutoff
from .sampling import Sampling, sampled_picker


# --------------------------------------------------------------------------------------------- prompts
def encode_prompts(rows: Sequence[Mapping], prompt_cfg: Mapping, tokenizer, cutoff_len: int, answer_len: int,
                   answer_start: str = PROBE_ANSWER) -> tuple[List[List[int]], List[bool]]:
    """Token ids of each row's prompt exactly as training tokenises them (before an answer starting with
    `answer_start`), cut by training's rule so that an answer of `answer_len` tokens fits in `cutoff_len`; and
    which prompts were cut."""
    encoded = [fit_to_cutoff(encode_prompt(row, prompt_cfg, tokenizer, answer_start), answer_len, cutoff_len)
               for row in rows]
    return [ids for ids, _ in encoded], [cut for _, cut in encoded]


def label_continuations(labels: Sequence[str], row: Mapping, prompt_cfg: Mapping, tokenizer) -> List[List[int]]:
    """Each label's answer ids (as training tokenises the answer, EOS included) after the prompt of `row`."""
    conts = [encode_row({**row, "output": label}, prompt_cfg, tokenizer)[1] for label in labels]
    for label, ids in zip(labels, conts):
        if len(ids) < 2:
            raise ValueError(f"label {label!r} tokenizes to nothing")
    return conts


def length_sorted_batches(lengths: Sequence[int], batch_size: int, sort: bool = True) -> List[List[int]]:
    """Indices grouped into batches, shortest first (ties keep input order, so runs are repeatable)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i)) if sort else list(range(len(lengths)))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_left(batch: Sequence[Sequence[int]], pad_id: int):
    """input_ids, attention_mask and position_ids (counting real tokens only) of a left-padded batch."""
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


def last_positions(n: int = 1):
    """`logits_to_keep` selecting the last `n` positions as an index tensor, not an int.

    With an int the model slices `hidden[:, -n:, :]`, a non-contiguous view that torch's linear cannot fold
    into one matmul on CPU: it broadcasts the vocab projection into a [batch, hidden, vocab] copy (0.9 GB and
    ~1 s per batch for SmolLM2). An index tensor gathers a contiguous copy first.
    """
    import torch

    return torch.arange(-n, 0)


def shared_prefix_length(prompt_ids: Sequence[Sequence[int]]) -> int:
    """How many leading tokens all prompts share, leaving every prompt at least one token of its own."""
    if not prompt_ids:
        return 0
    first, limit = prompt_ids[0], min(len(p) for p in prompt_ids) - 1
    n = 0
    while n < limit and all(p[n] == first[n] for p in prompt_ids):
        n += 1
    return n


def _cache(layers, config):
    from transformers import DynamicCache

    return DynamicCache(list(layers), config=config)


class SharedPrefix:
    """The key/value cache of the prompts' common leading tokens, computed once and reused by every batch.

    A batch is then [prefix][left padding][own tokens]: the padding sits in the middle, masked out, and the
    position ids continue from the prefix, so each row sees exactly the positions it would see unbatched.
    """

    def __init__(self, model, prompt_ids: Sequence[Sequence[int]], enabled: bool = True):
        import torch

        self.model, self.device = model, model_device(model)
        self.length = shared_prefix_length(prompt_ids) if enabled else 0
        self.kv = []
        if self.length:
            with torch.inference_mode():
                cache = model(input_ids=torch.tensor([list(prompt_ids[0][:self.length])], device=self.device),
                              use_cache=True, logits_to_keep=last_positions()).past_key_values
            self.kv = [(layer.keys, layer.values) for layer in cache.layers]

    def batch_inputs(self, batch_ids: Sequence[Sequence[int]], pad_id: int) -> dict:
        """Model inputs for a batch of full prompt ids (their shared prefix is replaced by the cache)."""
        import torch

        input_ids, attention_mask, position_ids = (t.to(self.device) for t in
                                                   pad_left([ids[self.length:] for ids in batch_ids], pad_id))
        if not self.length:
            return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        n = len(batch_ids)
        attention_mask = torch.cat([torch.ones((n, self.length), dtype=torch.long, device=self.device),
                                    attention_mask], dim=1)
        cache = _cache(((k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in self.kv), self.model.config)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, self.length:]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                "past_key_values": cache}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="ex", disable=not enabled, dynamic_ncols=True, mininterval=1.0)


# --------------------------------------------------------------------------------------------------- run
@dataclass
class Predictions:
    """Per-example results in input order, plus how long the model work took."""

    texts: List[str] = field(default_factory=list)  # decoded answers (empty without decoding)
    finished: List[bool] = field(default_factory=list)  # the answer ended with EOS within max_new_tokens
    log_probs: List[List[float]] = field(default_factory=list)  # each label's answer + EOS, summed
    first_token_log_probs: List[List[float]] = field(default_factory=list)  # each label's first token only
    seconds: float = 0.0


def _score_continuations(model, cache, attention_mask, last_pos, first_logp, conts: Sequence[Sequence[int]],
                         pad_id: int):
    """Log-likelihood of each continuation after each prompt: [batch, labels]. `first_logp` ([batch, vocab]) is
    the prompt pass's last position; the continuations' later tokens come from one pass over the cache, with
    every (prompt, label) pair a row (right-padded, so the padding follows every token that counts)."""
    import torch

    batch, k = first_logp.shape[0], len(conts)
    width = max(len(c) for c in conts) - 1  # the last token (EOS) is predicted, never fed
    feed = torch.full((k, max(width, 1)), pad_id, dtype=torch.long)
    for j, cont in enumerate(conts):
        feed[j, :len(cont) - 1] = torch.tensor(cont[:-1], dtype=torch.long)
    feed = feed.repeat(batch, 1).to(first_logp.device)
    expanded = _cache(((layer.keys.repeat_interleave(k, 0), layer.values.repeat_interleave(k, 0))
                       for layer in cache.layers), model.config)
    mask = torch.cat([attention_mask.repeat_interleave(k, 0), torch.ones_like(feed)], dim=1)
    positions = last_pos.repeat_interleave(k, 0)[:, None] + 1 + torch.arange(feed.shape[1], device=feed.device)
    logits = model(input_ids=feed, attention_mask=mask, position_ids=positions, past_key_values=expanded,
                   use_cache=True, logits_to_keep=last_positions(feed.shape[1])).logits.float()
    later = torch.log_softmax(logits, dim=-1).view(batch, k, feed.shape[1], -1)
    scores = torch.zeros((batch, k), dtype=torch.float64)
    for j, cont in enumerate(conts):
        total = first_logp[:, cont[0]].double().cpu()
        for t in range(1, len(cont)):  # position t - 1 of the fed tokens predicts cont[t]
            total += later[:, j, t - 1, cont[t]].double().cpu()
        scores[:, j] = total
    return scores


def _argmax(logits):
    return logits.argmax(-1)


def _greedy(model, cache, attention_mask, last_pos, first_logits, max_new_tokens: int, eos_ids, pad_id: int,
            pick=_argmax):
    """Continuation of every prompt from the prompt pass's cache, one token per step chosen by `pick` (greedy:
    argmax): token ids up to and including EOS, and whether each row reached EOS."""
    import torch

    eos = torch.tensor(sorted(eos_ids), device=first_logits.device)
    batch = first_logits.shape[0]
    generated = [[] for _ in range(batch)]
    finished = torch.zeros(batch, dtype=torch.bool, device=first_logits.device)
    next_ids = pick(first_logits)
    for step in range(max_new_tokens):
        for b in range(batch):
            if not finished[b]:
                generated[b].append(int(next_ids[b]))
        finished |= torch.isin(next_ids, eos)
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        feed = torch.where(finished, torch.full_like(next_ids, pad_id), next_ids)[:, None]
        attention_mask = torch.cat([attention_mask, torch.ones_like(feed)], dim=1)
        last_pos = last_pos + 1
        out = model(input_ids=feed, attention_mask=attention_mask, position_ids=last_pos[:, None],
                    past_key_values=cache, use_cache=True, logits_to_keep=last_positions())
        cache, next_ids = out.past_key_values, pick(out.logits[:, -1])
    return generated, finished.tolist()


def eos_token_ids(model, tokenizer) -> set:
    """Every token that ends an answer: the tokenizer's EOS and the model's generation-config EOS ids."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(configured if isinstance(configured, (list, tuple)) else [configured])
    return {i for i in ids if i is not None}


def run(model, tokenizer, prompt_ids: Sequence[Sequence[int]], continuations: Optional[Sequence[Sequence[int]]] = None,
        max_new_tokens: int = 0, batch_size: int = 16, sort: bool = True, prefix_cache: bool = True,
        progress: bool = True, desc: str = "evaluate", sampling: Optional[Sampling] = None) -> Predictions:
    """One prompt pass per batch; then score `continuations` (token ids incl. EOS) and/or decode up to
    `max_new_tokens` (0: no decoding) from it: greedily, or by `sampling`."""
    import torch

    start = time.perf_counter()
    n = len(prompt_ids)
    generators = sampling.generators(n) if sampling is not None else None
    result = Predictions(texts=[""] * n if max_new_tokens else [], finished=[False] * n if max_new_tokens else [],
                         log_probs=[[] for _ in range(n)] if continuations else [],
                         first_token_log_probs=[[] for _ in range(n)] if continuations else [])
    pad_id, eos_ids = tokenizer.pad_token_id, eos_token_ids(model, tokenizer)
    prefix = SharedPrefix(model, prompt_ids, enabled=prefix_cache)
    with torch.inference_mode(), _progress(n, desc, progress) as bar:
        for batch in length_sorted_batches([len(p) for p in prompt_ids], batch_size, sort):
            inputs = prefix.batch_inputs([prompt_ids[i] for i in batch], pad_id)
            out = model(**inputs, use_cache=True, logits_to_keep=last_positions())
            first_logits = out.logits[:, -1].float()
            cache, mask, last_pos = out.past_key_values, inputs["attention_mask"], inputs["position_ids"][:, -1]
            if continuations:
                first_logp = torch.log_softmax(first_logits, dim=-1)
                scores = _score_continuations(model, cache, mask, last_pos, first_logp, continuations, pad_id)
                firsts = first_logp[:, [c[0] for c in continuations]].double().cpu()
                for j, i in enumerate(batch):
                    result.log_probs[i] = scores[j].tolist()
                    result.first_token_log_probs[i] = firsts[j].tolist()
            if max_new_tokens:
                pick = sampled_picker(sampling, [generators[i] for i in batch]) if sampling else _argmax
                generated, finished = _greedy(model, cache, mask, last_pos, first_logits, max_new_tokens, eos_ids,
                                              pad_id, pick)
                texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
                for j, i in enumerate(batch):
                    result.texts[i], result.finished[i] = texts[j].strip(), finished[j]
            bar.update(len(batch))
    result.seconds = time.perf_counter() - start
    return result


# -------------------------------------------------------------------------------------------- classify
def _argmax_labels(scores: Sequence[Sequence[float]], labels: Sequence[str]) -> List[str]:
    return [labels[max(range(len(labels)), key=row.__getitem__)] for row in scores]


def classify(model, tokenizer, rows: Sequence[Mapping], prompt_cfg: Mapping, labels: Sequence[str], parse, *,
             mode: str, score_method: str = "full", max_new_tokens: int = 4, batch_size: int = 16,
             cutoff_len: int = 1024, prefix_cache: bool = True, agreement: bool = True, progress: bool = True,
             desc: str = "evaluate") -> dict:
    """Label Alpaca rows in `mode` (greedy: decode and parse; score: the most likely label).

    Score mode ranks labels by `score_method`: `full`, the log-likelihood of every answer token + EOS (a label
    that is a prefix of another is not favoured), or `first_token`, the shortcut comparing the first tokens
    only. `agreement`: also run the other mode (its cost is small: same prompt pass). Returns predicted
    labels, raw outputs, per-mode labels, per-label log-likelihoods, which prompts were truncated and the time.
    """
    answer_len = answer_length(labels, prompt_cfg, tokenizer)
    prompt_ids, truncated = encode_prompts(rows, prompt_cfg, tokenizer, cutoff_len, answer_len, labels[0])
    conts = label_continuations(labels, rows[0], prompt_cfg, tokenizer) if rows else []
    firsts_differ = len({c[0] for c in conts}) == len(conts)
    if score_method == "first_token" and not firsts_differ:
        raise HatetuneError(f"the labels {list(labels)} share their first token, so first-token scoring cannot "
                            "tell them apart: use full", field="eval.score_method")
    want_scores, want_greedy = mode == "score" or agreement, mode == "greedy" or agreement
    ran = run(model, tokenizer, prompt_ids, conts if want_scores else None, max_new_tokens if want_greedy else 0,
              batch_size=batch_size, prefix_cache=prefix_cache, progress=progress, desc=desc)
    out = {"truncated": truncated, "seconds": ran.seconds, "greedy_labels": None, "score_labels": None,
           "first_token_labels": None, "log_probs": None}
    if want_scores:
        full = _argmax_labels(ran.log_probs, labels)
        first = _argmax_labels(ran.first_token_log_probs, labels) if firsts_differ else None
        out.update(score_labels=first if score_method == "first_token" else full, first_token_labels=first,
                   full_labels=full, log_probs=ran.log_probs)
    if want_greedy:
        out["greedy_labels"] = [parse(text) for text in ran.texts]
    out["predicted"] = out["score_labels"] if mode == "score" else out["greedy_labels"]
    out["outputs"] = ran.texts if mode == "greedy" else out["score_labels"]
    return out
