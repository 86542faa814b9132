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
    assert batch["logits_to_keep"] == 3  # the token before the first answer token, to the end
    fixed = sft_data.PaddingCollator(pad_token_id=0, pad_to=6, trim_logits=False)(features)
    assert fixed["input_ids"].shape == (2, 6) and "logits_to_keep" not in fixed


def test_trimmed_loss_equals_the_full_causal_lm_loss(cfg, tok, tiny_model_dir):
    model = models.load_model(cfg.model, tiny_model_dir, quantize=False, dtype="float32")
    for loss_on in ("completion", "all"):
        examples, _ = sft_data.encode_rows(make_rows(5), cfg.task.prompt, tok, 256, loss_on)
        batch = sft_data.PaddingCollator(tok.pad_token_id)(examples)
        labels, keep = batch.pop("labels"), batch.pop("logits_to_keep")
        with torch.no_grad():
            fast = sft_data.completion_loss(model(**batch, logits_to_keep=keep), labels)
            total, count = 0.0, 0
            for e in examples:  # each example alone, unpadded, full logits
                logits = model(input_ids=torch.tensor([e["input_ids"]])).logits[0, :-1]
                target = torch.tensor(e["labels"][1:])
                total += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum")
                count += int((target != -100).sum())
        assert float(fast) == pytest.approx(float(total / count), rel=1e-4)
