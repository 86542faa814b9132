"""Batched greedy generation and label scoring on a real tiny Llama with a real (random, non-zero) LoRA adapter,
checked against independent references: transformers' own `generate` one prompt at a time, and each label's
log-likelihood from a plain forward pass over prompt + answer (no cache, no batching).

fp32 for the exactness checks; real bitsandbytes 4-bit (fp32 compute) for the path the stage uses.
"""
from __future__ import annotations

import pytest
import torch

from support import ROOT
from hatetune import config, inference, models, prompts
from hatetune.parsing import get_parser
from hatetune.prompts import alpaca_row

POSTS = ["they are vermin", "I love my neighbourhood", "women", "immigrants should go back", "the a post",
         "respect our jews and muslims", "people they them those we our", "classify label", "hate hate not"]


@pytest.fixture(scope="module")
def cfg():
    return config.load([], ROOT / "params.yaml")


@pytest.fixture(scope="module")
def rows(cfg):
    p = cfg.task.prompt
    return [alpaca_row(p.instruction, post, "hate", p.system, str(i)) for i, post in enumerate(POSTS)]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory, cfg):
    """A freshly initialised LoRA adapter with non-zero B (so it changes the outputs), saved like training does."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    base = models.load_model(cfg.model, tiny_model_dir, quantize=False, dtype="float32")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 init_lora_weights=False, task_type="CAUSAL_LM"))
    out = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(out)
    models.load_tokenizer(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def fp32_model(cfg, tiny_model_dir, adapter_dir):
    return models.load_model(cfg.model, tiny_model_dir, quantize=False, adapter_dir=adapter_dir, dtype="float32")


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return models.load_tokenizer(tiny_model_dir, padding_side="left")


def _prompt_ids(cfg, rows, tokenizer, cutoff=256):
    return inference.encode_prompts(rows, cfg.task.prompt, tokenizer, cutoff, answer_len=3)[0]


def hf_generate_one_by_one(model, tokenizer, prompt_ids, max_new_tokens) -> list[str]:
    """The reference: transformers' greedy `generate`, one unpadded prompt at a time."""
    texts = []
    for ids in prompt_ids:
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=max_new_tokens,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        texts.append(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip())
    return texts


def naive_log_likelihoods(model, prompt, continuations) -> tuple[list[float], list[float]]:
    """Each continuation's summed log-prob (and its first token's) from one plain forward pass of prompt + it."""
    full, first = [], []
    for cont in continuations:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + cont])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        per_token = [float(logp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(cont)]
        full.append(sum(per_token))
        first.append(per_token[0])
    return full, first


def test_prompts_share_a_prefix_and_sort_by_length(cfg, rows, tokenizer):
    ids = _prompt_ids(cfg, rows, tokenizer)
    n = inference.shared_prefix_length(ids)
    assert 0 < n < min(map(len, ids))
    assert all(p[:n] == ids[0][:n] for p in ids)
    assert any(p[n] != ids[0][n] for p in ids if len(p) > n)  # the longest shared prefix
    batches = inference.length_sorted_batches([len(p) for p in ids], 4)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(ids))) and [len(b) for b in batches] == [4, 4, 1]
    assert [len(ids[i]) for i in flat] == sorted(len(p) for p in ids)


def test_prompts_are_truncated_exactly_as_in_training(cfg, rows, tokenizer):
    long_row = {**rows[0], "input": " ".join(["people"] * 200)}
    full = prompts.encode_prompt(long_row, cfg.task.prompt, tokenizer)
    short = prompts.encode_prompt(rows[1], cfg.task.prompt, tokenizer)
    cutoff = len(short) + 3  # the short prompt and a 3-token answer just fit
    ids, truncated = inference.encode_prompts([rows[1], long_row], cfg.task.prompt, tokenizer, cutoff, answer_len=3)
    assert truncated == [False, True] and ids[0] == short
    assert ids[1] == prompts.fit_to_cutoff(full, 3, cutoff)[0] and len(ids[1]) == cutoff - 3
    assert tokenizer.decode(ids[1]).endswith("<|im_start|>assistant\n")


def test_batched_greedy_equals_transformers_generate_one_prompt_at_a_time(cfg, rows, fp32_model, tokenizer):
    ids = _prompt_ids(cfg, rows, tokenizer)
    batched = inference.run(fp32_model, tokenizer, ids, max_new_tokens=6, batch_size=4, progress=False)
    reference = hf_generate_one_by_one(fp32_model, tokenizer, ids, 6)
    assert batched.texts == reference
    assert len(set(reference)) > 1  # the random model writes different things for different posts
    unbatched = inference.run(fp32_model, tokenizer, ids, max_new_tokens=6, batch_size=1, sort=False,
                              prefix_cache=False, progress=False)
    assert unbatched.texts == reference


@pytest.mark.parametrize("labels", [["hate", "not hate"], ["not hate", "not"]])
def test_label_scores_equal_plain_forward_log_likelihoods(cfg, rows, fp32_model, tokenizer, labels):
    """Full scoring sums every answer token + EOS; `not hate` / `not` share their first token, so only full
    scoring can tell them apart (and a label that is a prefix of another is not favoured: EOS counts)."""
    ids = _prompt_ids(cfg, rows, tokenizer)
    conts = inference.label_continuations(labels, rows[0], cfg.task.prompt, tokenizer)
    assert all(c[-1] == tokenizer.eos_token_id for c in conts)
    result = inference.run(fp32_model, tokenizer, ids, continuations=conts, batch_size=4, progress=False)
    for i, prompt in enumerate(ids):
        full, first = naive_log_likelihoods(fp32_model, prompt, conts)
        assert result.log_probs[i] == pytest.approx(full, abs=1e-3)
        assert result.first_token_log_probs[i] == pytest.approx(first, abs=1e-3)
    spread = [row[0] - row[1] for row in result.log_probs]
    assert max(spread) - min(spread) > 0.1  # the scores depend on the post, not only on the label


def test_prefix_cache_changes_nothing_in_fp32(cfg, rows, fp32_model, tokenizer):
    ids = _prompt_ids(cfg, rows, tokenizer)
    conts = inference.label_continuations(["hate", "not hate"], rows[0], cfg.task.prompt, tokenizer)
    kw = dict(continuations=conts, max_new_tokens=5, batch_size=4, progress=False)
    with_cache = inference.run(fp32_model, tokenizer, ids, prefix_cache=True, **kw)
    without = inference.run(fp32_model, tokenizer, ids, prefix_cache=False, **kw)
    for a, b in zip(with_cache.log_probs, without.log_probs):
        assert a == pytest.approx(b, abs=1e-4)
    assert with_cache.texts == without.texts


def test_classify_on_the_real_4bit_path_matches_the_one_by_one_references(cfg, rows, tiny_model_dir, adapter_dir,
                                                                          tokenizer):
    cfg = config.load(["model.quantization.compute_dtype=float32"], ROOT / "params.yaml")
    model = models.load_model(cfg.model, tiny_model_dir, quantize=True, adapter_dir=adapter_dir)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    labels = list(cfg.task.labels.names)
    parse = get_parser(cfg.task.parser, labels)
    kw = dict(max_new_tokens=4, batch_size=4, cutoff_len=256, progress=False)
    greedy = inference.classify(model, tokenizer, rows, cfg.task.prompt, labels, parse, mode="greedy", **kw)
    ids = inference.encode_prompts(rows, cfg.task.prompt, tokenizer, 256, 3, labels[0])[0]
    reference_texts = hf_generate_one_by_one(model, tokenizer, ids, 4)
    assert greedy["outputs"] == reference_texts
    assert greedy["predicted"] == [parse(t) for t in reference_texts]
    conts = inference.label_continuations(labels, rows[0], cfg.task.prompt, tokenizer)
    reference_scores = [naive_log_likelihoods(model, p, conts) for p in ids]
    by_full = [labels[max(range(2), key=full.__getitem__)] for full, _ in reference_scores]
    by_first = [labels[max(range(2), key=first.__getitem__)] for _, first in reference_scores]
    assert greedy["score_labels"] == by_full and greedy["first_token_labels"] == by_first  # agreement inputs

    score = inference.classify(model, tokenizer, rows, cfg.task.prompt, labels, parse, mode="score", **kw)
    assert score["predicted"] == by_full and score["greedy_labels"] == greedy["predicted"]
    shortcut = inference.classify(model, tokenizer, rows, cfg.task.prompt, labels, parse, mode="score",
                                  score_method="first_token", agreement=False, **kw)
    assert shortcut["predicted"] == by_first and shortcut["greedy_labels"] is None
