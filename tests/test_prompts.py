"""hatetune.prompts: Alpaca rows and prompts carry each seed's text exactly."""
from __future__ import annotations

import pytest

from hatetune import config, prompts

DYNAHATE_INSTRUCTION = ("You are a helpful Assistant. Your task is to classify the social media post as hate or "
                        "not hate. Post:")
DYNAHATE_SYSTEM = "Strictly respond only with the label: 'hate' or 'not hate'."


@pytest.fixture(scope="module")
def tasks():
    return {name: config.validate(config.compose([f"task={name}"])).task for name in ("dynahate", "mhs")}


def test_dynahate_alpaca_row_is_seed_b(tasks):
    [row] = prompts.alpaca_rows([{"id": "acl1", "text": "a post", "label": "not hate", "split": "dev",
                                  "group": "acl1"}], tasks["dynahate"].prompt)
    assert row == {"instruction": DYNAHATE_INSTRUCTION, "input": "a post", "output": "not hate",
                   "system": DYNAHATE_SYSTEM, "id": "acl1"}
    assert list(row) == ["instruction", "input", "output", "system", "id"]


def test_mhs_prompt_is_seed_c_template_whitespace_exact(tasks):
    [row] = prompts.alpaca_rows([{"id": "7", "text": "some text {with braces}", "label": "Neutral"}],
                                tasks["mhs"].prompt)
    expected = ("[INST] ### Instruction: Below is a short text that you need to classify into one of three "
                "classes: Hate / Neutral / Supportive. \n### Text: some text {with braces} \n### Answer: [/INST] ")
    assert prompts.build_prompt(row, tasks["mhs"].prompt) == expected
    assert row["system"] == "" and row["output"] == "Neutral"
    assert prompts.build_prompt(row, tasks["mhs"].prompt) + prompts.build_completion(row, "</s>") == \
        expected + "Neutral</s>"


def test_dynahate_chat_prompt_uses_the_chat_template(tasks, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    [row] = prompts.alpaca_rows([{"id": "a", "text": "a post", "label": "hate"}], tasks["dynahate"].prompt)
    assert prompts.build_prompt(row, tasks["dynahate"].prompt, tokenizer) == (
        f"<|im_start|>system\n{DYNAHATE_SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{DYNAHATE_INSTRUCTION}\na post<|im_end|>\n<|im_start|>assistant\n")
