"""Alpaca rows and turning a row into model input: the ONE place prompts are built.

Training, evaluation, the zero-shot baseline and the inference service all call `build_prompt`, so the text a
model is trained on is byte-for-byte the text it is evaluated and served with (seed C's train/serve skew cannot
happen here).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Optional

ALPACA_KEYS = ("instruction", "input", "output", "system")


def alpaca_row(instruction: str, input: str, output: str, system: str = "", id: Optional[str] = None) -> dict:
    """One Alpaca JSONL record {instruction, input, output, system} (+ `id` to trace predictions back)."""
    row = {"instruction": instruction, "input": input, "output": output, "system": system}
    if id is not None:
        row["id"] = str(id)
    return row


def user_message(row: Mapping[str, Any]) -> str:
    """The user turn: instruction and input joined by a newline, as LLaMA-Factory's alpaca converter does."""
    return "\n".join(part for part in (row.get("instruction") or "", row.get("input") or "") if part)


def chat_messages(row: Mapping[str, Any]) -> list[dict]:
    messages = []
    if row.get("system"):
        messages.append({"role": "system", "content": row["system"]})
    messages.append({"role": "user", "content": user_message(row)})
    return messages


def build_prompt(row: Mapping[str, Any], prompt_cfg: Mapping[str, Any], tokenizer=None) -> str:
    """The model input up to where the answer starts.

    prompt_cfg.format == "raw": `template.format(instruction=..., input=..., system=...)` (seed C's template).
    prompt_cfg.format == "chat": the tokenizer's chat template with the generation prompt appended.
    """
    if prompt_cfg["format"] == "raw":
        return prompt_cfg["template"].format(instruction=row.get("instruction", ""), input=row.get("input", ""),
                                             system=row.get("system", ""))
    if tokenizer is None:
        raise ValueError("a chat prompt needs the tokenizer (for its chat template)")
    return tokenizer.apply_chat_template(chat_messages(row), tokenize=False, add_generation_prompt=True)


def build_completion(row: Mapping[str, Any], eos_token: str) -> str:
    """What the model learns to produce after the prompt: the answer and EOS."""
    return f"{row['output']}{eos_token}"


def alpaca_rows(table: Iterable[Mapping[str, Any]], prompt_cfg: Mapping[str, Any]) -> Iterator[dict]:
    """Canonical rows (id, text, label, ...) -> Alpaca rows with the task's instruction and system prompt."""
    for row in table:
        yield alpaca_row(prompt_cfg["instruction"], row["text"], row["label"], prompt_cfg.get("system") or "",
                         id=row["id"])
