"""Batched greedy generation and label scoring on a real tiny Llama with a real (random, non-zero) LoRA adapter.

fp32 for the exactness checks (batched == one at a time, cached prefix == no cache, scores == naive per-example
log-likelihoods); real bitsandbytes 4-bit for the end-to-end path the stage uses.
"""
from __future__ import annotations

import pytest
import torch

from conftest import ROOT
from hatetune import config, inference, models
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


def test_prompts_share_a_prefix_and_sort_by_length(cfg, rows, tokenizer):
    ids = inference.encode_prompts(rows, cfg.task.prompt, tokenizer)
    n = inference.shared_prefix_length(ids)
    assert 0 < n < min(map(len, ids))
    assert all(p[:n] == ids[0][:n] for p in ids)
    assert any(p[n] != ids[0][n] for p in ids if len(p) > n)  # the longest shared prefix
    batches = inference.length_sorted_batches([len(p) for p in ids], 4)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(ids))) and [len(b) for b in batches] == [4, 4, 1]
    assert [len(ids[i]) for i in flat] == sorted(len(p) for p in ids)


def test_batched_greedy_equals_one_prompt_at_a_time(cfg, rows, fp32_model, tokenizer):
    ids = inference.encode_prompts(rows, cfg.task.prompt, tokenizer)
    batched = inference.generate_greedy(fp32_model, tokenizer, ids, 6, batch_size=4, progress=False)
    single = inference.generate_greedy(fp32_model, tokenizer, ids, 6, batch_size=1, sort=False,
                                       prefix_cache=False, progress=False)
    assert batched.outputs == single.outputs
    assert any(batched.outputs)  # the random model does write something


def test_score_mode_gives_real_labels_matching_naive_log_likelihoods(cfg, rows, fp32_model, tokenizer):
    ids = inference.encode_prompts(rows, cfg.task.prompt, tokenizer)
    eos = tokenizer.eos_token_id
    # "not hate" / "not": the same first token, so the full continuations (+ EOS) are scored
    for labels in (["hate", "not hate"], ["not hate", "not"]):
        label_ids = inference.label_token_ids(tokenizer, labels)
        full = not inference.first_tokens_differ(label_ids)
        assert full == (labels[1] == "not")
        result = inference.score_labels(fp32_model, tokenizer, ids, labels, batch_size=4, progress=False)
        assert set(result.labels) <= set(labels) and len(result.labels) == len(ids)
        for i, prompt in enumerate(ids):
            naive = []
            for cont in label_ids:
                cont = cont + [eos] if full else cont[:1]
                with torch.no_grad():
                    logits = fp32_model(input_ids=torch.tensor([prompt + cont])).logits[0].float()
                logp = torch.log_softmax(logits, -1)
                naive.append(sum(float(logp[len(prompt) - 1 + t, tok]) for t, tok in enumerate(cont)))
            assert result.log_probs[i] == pytest.approx(naive, abs=1e-3)
            assert result.labels[i] == labels[max(range(len(labels)), key=naive.__getitem__)]


def test_greedy_first_step_gives_score_mode_labels_for_free(cfg, rows, fp32_model, tokenizer):
    ids = inference.encode_prompts(rows, cfg.task.prompt, tokenizer)
    labels = ["hate", "not hate"]
    greedy = inference.generate_greedy(fp32_model, tokenizer, ids, 3, batch_size=4, labels=labels, progress=False)
    scored = inference.score_labels(fp32_model, tokenizer, ids, labels, batch_size=4, progress=False)
    assert greedy.labels == scored.labels


def test_prefix_cache_changes_nothing_in_fp32(cfg, rows, fp32_model, tokenizer):
    ids = inference.encode_prompts(rows, cfg.task.prompt, tokenizer)
    labels = ["hate", "not hate"]
    kw = dict(batch_size=4, progress=False)
    with_cache = inference.score_labels(fp32_model, tokenizer, ids, labels, prefix_cache=True, **kw)
    without = inference.score_labels(fp32_model, tokenizer, ids, labels, prefix_cache=False, **kw)
    for a, b in zip(with_cache.log_probs, without.log_probs):
        assert a == pytest.approx(b, abs=1e-4)
    g1 = inference.generate_greedy(fp32_model, tokenizer, ids, 5, prefix_cache=True, **kw)
    g2 = inference.generate_greedy(fp32_model, tokenizer, ids, 5, prefix_cache=False, **kw)
    assert g1.outputs == g2.outputs


def test_predict_on_the_real_4bit_path(cfg, rows, tiny_model_dir, adapter_dir, tokenizer):
    from hatetune.parsing import INVALID, get_parser

    model = models.load_model(cfg.model, tiny_model_dir, quantize=True, adapter_dir=adapter_dir)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    labels = list(cfg.task.labels.names)
    parse = get_parser(cfg.task.parser, labels)
    greedy = inference.predict(model, tokenizer, rows, cfg.task.prompt, parse, labels, "greedy", 4, 4,
                               progress=False)
    assert len(greedy["predicted"]) == len(rows) and set(greedy["predicted"]) <= set(labels) | {INVALID}
    assert set(greedy["other"]) <= set(labels)  # the free score-mode labels
    score = inference.predict(model, tokenizer, rows, cfg.task.prompt, parse, labels, "score", 4, 4,
                              progress=False)
    assert set(score["predicted"]) <= set(labels)  # every example gets a real label
    assert score["other"] is not None and len(score["other"]) == len(rows)  # greedy labels for the agreement
