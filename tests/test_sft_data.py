"""hatetune.sft_data: tokenisation with prompt masking, truncation, padding and the loss window."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hatetune import config, models, sft_data
from hatetune.errors import HatetuneError
from hatetune.prompts import build_prompt, fit_to_cutoff
from training_data import SYSTEM, make_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cfg(tiny_model_dir):
    return config.load([f"model.path={tiny_model_dir}"], ROOT / "params.yaml")


@pytest.fixture
def tok(tiny_model_dir):
    return models.load_tokenizer(tiny_model_dir, padding_side="right")


def test_loss_only_on_the_answer_and_eos(cfg, tok):
    row = make_rows(1)[0]
    example, truncated = sft_data.encode_example(row, cfg.task.prompt, tok, 256, "completion")
    prompt_ids = tok(build_prompt(row, cfg.task.prompt, tok), add_special_tokens=False)["input_ids"]
    answer_ids = tok("hate" + tok.eos_token, add_special_tokens=False)["input_ids"]
    assert not truncated
    assert example["input_ids"] == prompt_ids + answer_ids
    assert example["labels"] == [-100] * len(prompt_ids) + answer_ids
    assert example["labels"][-1] == tok.eos_token_id
    assert tok.bos_token_id not in example["input_ids"]  # ChatML writes no BOS; the tokenizer's is not added


def test_loss_on_all_scores_the_prompt_too(cfg, tok):
    example, _ = sft_data.encode_example(make_rows(1)[0], cfg.task.prompt, tok, 256, "all")
    assert example["labels"] == example["input_ids"]


def test_raw_template_prompt_is_the_seed_c_text_with_one_bos(tok):
    cfg = config.load(["task=mhs"])
    row = {"instruction": cfg.task.prompt.instruction, "input": "some text", "output": "Hate", "system": ""}
    example, _ = sft_data.encode_example(row, cfg.task.prompt, tok, 256, "all")
    assert example["input_ids"][0] == tok.bos_token_id and example["input_ids"].count(tok.bos_token_id) == 1
    text = tok.decode(example["input_ids"][1:])
    assert text == ("[INST] ### Instruction: " + cfg.task.prompt.instruction + " \n### Text: some text \n"
                    "### Answer: [/INST] Hate " + tok.eos_token)


def test_truncation_keeps_the_answer_and_the_assistant_header(cfg, tok):
    rows = make_rows(4)
    cutoff = max(len(e["input_ids"]) for e in sft_data.encode_rows(rows, cfg.task.prompt, tok, 10_000,
                                                                   "completion")[0])
    row = make_rows(1)[0]
    row["input"] = " ".join(["people"] * 300)
    example, truncated = sft_data.encode_example(row, cfg.task.prompt, tok, cutoff, "completion")
    assert truncated and len(example["input_ids"]) == cutoff
    text = tok.decode(example["input_ids"])
    assert text.startswith("<|im_start|>system\n" + SYSTEM)
    assert text.endswith("<|im_start|>assistant\nhate<|im_end|>")
    _, n_truncated = sft_data.encode_rows(rows + [row], cfg.task.prompt, tok, cutoff, "completion")
    assert n_truncated == 1
    # the same rule evaluation applies: prompts.fit_to_cutoff with the answer's length
    prompt_ids = [i for i, label in zip(example["input_ids"], example["labels"]) if label == -100]
    full = tok(build_prompt(row, cfg.task.prompt, tok), add_special_tokens=False)["input_ids"]
    assert prompt_ids == fit_to_cutoff(full, len(example["input_ids"]) - len(prompt_ids), cutoff)[0]


@pytest.mark.parametrize("field, value", [("output", None), ("input", 3), ("output", "")])
def test_bad_row_names_file_row_and_field(cfg, tok, field, value):
    rows = make_rows(3)
    rows[1][field] = value
    with pytest.raises(HatetuneError) as err:
        sft_data.encode_rows(rows, cfg.task.prompt, tok, 256, "completion", source="train.jsonl")
    assert (err.value.file, err.value.row, err.value.field) == ("train.jsonl", 2, field)


def test_collator_pads_left_to_the_longest_and_keeps_only_the_answer_logits():
    features = [{"input_ids": [5, 6, 7, 8], "labels": [-100, -100, 7, 8]},
                {"input_ids": [5, 6], "labels": [-100, 6]}]
    batch = sft_data.PaddingCollator(pad_token_id=0)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8], [0, 0, 5, 6]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [0, 0, 1, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 8], [-100, -100, -100, 6]]
    assert batch["logits_to_keep"].tolist() == [1, 2]  # positions whose next token is scored
    fixed = sft_data.PaddingCollator(pad_token_id=0, pad_to=6)(features)
    assert fixed["input_ids"].shape == (2, 6) and fixed["logits_to_keep"].tolist() == [3, 4]


def test_trimmed_loss_equals_the_full_causal_lm_loss(cfg, tok, tiny_model_dir):
    model = models.load_model(cfg.model, tiny_model_dir, quantize=False, dtype="float32")
    for loss_on in ("completion", "all"):
        examples, _ = sft_data.encode_rows(make_rows(5), cfg.task.prompt, tok, 256, loss_on)
        batch = sft_data.PaddingCollator(tok.pad_token_id)(examples)
        labels = batch.pop("labels")
        with torch.no_grad():
            fast = sft_data.completion_loss(model(**batch), labels)
            total, count = 0.0, 0
            for e in examples:  # each example alone, unpadded, full logits
                logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
                target = torch.tensor(e["labels"][1:])
                total += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
                count += int((target != -100).sum())
        assert float(fast) == pytest.approx(float(total / count), rel=1e-4)


# ---------------------------------------------------------------------------------- shared-prefix packing
def _lora_model(cfg, tiny_model_dir, quantize: bool, dtype: str):
    from hatetune import training

    cfg.lora.dropout = 0.0  # the same computation either way (dropout masks would differ)
    model = training.attach_lora(models.load_model(cfg.model, tiny_model_dir, quantize=quantize, trainable=True,
                                                   dtype=dtype), cfg)
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # non-zero, so every lora_A gets a gradient
                p.normal_(0, 0.2)
    return model


def _loss_and_grads(model, batch, bf16: bool = False):
    batch = dict(batch)
    labels = batch.pop("labels")
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = sft_data.completion_loss(model(**batch), labels)
    loss.backward()
    return float(loss), {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if "lora_" in n}


def _worst_relative(got, expected) -> float:
    return max(float((got[n] - expected[n]).abs().max() / expected[n].abs().max()) for n in expected)


PROMPT_FORMATS = {
    "chat with a system turn": {},
    "chat without a system turn": {"system": ""},
    "raw template with the tokenizer's BOS": "task=mhs",
}


@pytest.mark.parametrize("form", PROMPT_FORMATS)
def test_packed_shared_prefix_gives_the_padded_batch_loss_and_gradients(tiny_model_dir, form):
    overrides = [f"model.path={tiny_model_dir}"] + ([PROMPT_FORMATS[form]] if isinstance(PROMPT_FORMATS[form], str) else [])
    cfg = config.load(overrides, ROOT / "params.yaml")
    tok = models.load_tokenizer(tiny_model_dir, cfg.model, padding_side="right")
    rows = [{**r, **(PROMPT_FORMATS[form] if isinstance(PROMPT_FORMATS[form], dict) else {}),
             "instruction": cfg.task.prompt.instruction} for r in make_rows(6)]
    if cfg.task.name == "mhs":
        rows = [{**r, "output": ["Hate", "Neutral", "Supportive"][i % 3], "system": ""} for i, r in enumerate(rows)]
    examples, _ = sft_data.encode_rows(rows, cfg.task.prompt, tok, 256, "completion")
    packed = sft_data.PackedPrefixCollator(tok.pad_token_id)(examples)
    padded = sft_data.PaddingCollator(tok.pad_token_id)(examples)
    assert packed["input_ids"].shape[0] == 1 and packed["attention_mask"].dim() == 4  # really packed
    prefix = sft_data.shared_prefix_length(examples)
    assert prefix >= 8 and packed["input_ids"].shape[1] == sum(len(e["input_ids"]) for e in examples) - 5 * prefix
    model = _lora_model(cfg, tiny_model_dir, quantize=False, dtype="float32")
    loss_packed, grads_packed = _loss_and_grads(model, packed)
    loss_padded, grads_padded = _loss_and_grads(model, padded)
    assert loss_packed == pytest.approx(loss_padded, rel=1e-5)
    assert _worst_relative(grads_packed, grads_padded) < 1e-4


def test_packed_and_padded_agree_on_the_real_4bit_path(cfg, tok, tiny_model_dir):
    """bf16 autocast over bitsandbytes nf4: equal up to bf16 rounding, as two padded layouts are."""
    examples, _ = sft_data.encode_rows(make_rows(6), cfg.task.prompt, tok, 256, "completion")
    model = _lora_model(cfg, tiny_model_dir, quantize=True, dtype="bfloat16")
    loss_packed, grads_packed = _loss_and_grads(model, sft_data.PackedPrefixCollator(tok.pad_token_id)(examples),
                                                bf16=True)
    loss_padded, grads_padded = _loss_and_grads(model, sft_data.PaddingCollator(tok.pad_token_id)(examples),
                                                bf16=True)
    assert loss_packed == pytest.approx(loss_padded, rel=2e-2)
    assert _worst_relative(grads_packed, grads_padded) < 0.15


def test_nothing_to_share_falls_back_to_a_padded_batch(cfg, tok):
    collate = sft_data.PackedPrefixCollator(tok.pad_token_id)
    examples, _ = sft_data.encode_rows(make_rows(4), cfg.task.prompt, tok, 256, "all")  # seed C: all scored
    assert sft_data.shared_prefix_length(examples) == 0
    assert collate(examples)["attention_mask"].dim() == 2
    one, _ = sft_data.encode_rows(make_rows(1), cfg.task.prompt, tok, 256, "completion")
    assert collate(one)["attention_mask"].dim() == 2


def test_batch_counts_report_the_rows_tokens_for_packed_and_padded_batches(cfg, tok):
    from hatetune.training import batch_counts

    examples, _ = sft_data.encode_rows(make_rows(5), cfg.task.prompt, tok, 256, "completion")
    real = sum(len(e["input_ids"]) for e in examples)
    padded = sft_data.PaddingCollator(tok.pad_token_id)(examples)
    assert batch_counts(padded) == (real, padded["input_ids"].numel(), 5)
    packed = sft_data.PackedPrefixCollator(tok.pad_token_id)(examples)
    assert batch_counts(packed) == (real, packed["input_ids"].shape[1], 5)
