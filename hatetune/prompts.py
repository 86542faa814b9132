"""Alpaca rows and turning a row into model input text and token ids: the ONE place prompts are built.

Training, evaluation, the zero-shot baseline and the inference service all call these functions, so the token
ids a model is trained on are exactly those it is evaluated and served with (seed C's train/serve skew cannot
happen here).

- `build_prompt`: the text up to where the answer starts (the tokenizer's chat template, or a raw template).
- `build_completion`: the answer as the template writes it, up to and including EOS (ChatML: `hate<|im_end|>`,
  Llama-2: ` hate </s>`).
- `encode_row`: prompt and answer tokenised TOGETHER and split where the prompt's text ends, so a raw template
  ending in a space gives no stray `▁` token with a SentencePiece tokenizer (the space belongs to the answer's
  first token, `▁Hate`, exactly as in seed C's training text). `encode_prompt` gives the same prompt ids for
  a row without an answer.
- `fit_to_cutoff`: the one truncation rule, shared by training and evaluation.

An empty system prompt sends no system turn, so the model's template decides what happens: SmolLM2's injects its
own default system prompt ("You are a helpful AI assistant named SmolLM, ..."), LLaMA-Factory's `llama3` and the
Llama-2 templates write no system block (tests/test_prompts.py shows each).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

from .errors import HatetuneError

ALPACA_KEYS = ("instruction", "input", "output", "system")
# Prompt tokens always kept at the end of an over-long prompt: the end of the user turn and the assistant header.
PROMPT_TAIL_TOKENS = 16
# A stand-in answer for tokenising a prompt alone (a reply starting with a common word: "I cannot ...").
PROBE_ANSWER = "I"


def alpaca_row(instruction: str, input: str, output: str, system: str = "", id: Optional[str] = None) -> dict:
    """One Alpaca JSONL record {instruction, input, output, system} (+ `id` to trace predictions back)."""
    row = {"instruction": instruction, "input": input, "output": output, "system": system}
    if id is not None:
        row["id"] = str(id)
    return row


def input_row(text: str, prompt_cfg: Mapping[str, Any]) -> dict:
    """The Alpaca row of a text to label, as the convert stage writes a post of the task (no answer): what the
    service and the export's checks send through the model."""
    return alpaca_row(prompt_cfg["instruction"], text, "", prompt_cfg.get("system") or "")


def user_message(row: Mapping[str, Any]) -> str:
    """The user turn: instruction and input joined by a newline, as LLaMA-Factory's alpaca converter does."""
    return "\n".join(part for part in (row.get("instruction") or "", row.get("input") or "") if part)


def chat_messages(row: Mapping[str, Any]) -> list[dict]:
    """System turn (when set), the earlier turns of `history` (LLaMA-Factory's alpaca field: [[user, assistant],
    ...], e.g. a DIALOCONAN dialogue), then the user turn."""
    messages = []
    if row.get("system"):
        messages.append({"role": "system", "content": row["system"]})
    for user, assistant in row.get("history") or []:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    messages.append({"role": "user", "content": user_message(row)})
    return messages


def build_prompt(row: Mapping[str, Any], prompt_cfg: Mapping[str, Any], tokenizer=None) -> str:
    """The model input up to where the answer starts.

    prompt_cfg.format == "raw": `template.format(instruction=..., input=..., system=...)` (seed C's template).
    prompt_cfg.format == "chat": the tokenizer's chat template with the generation prompt appended.
    """
    if prompt_cfg["format"] == "raw":
        if row.get("history"):
            raise HatetuneError("a raw template has no place for earlier turns: use a chat prompt",
                                field="task.prompt.format")
        return prompt_cfg["template"].format(instruction=row.get("instruction", ""), input=row.get("input", ""),
                                             system=row.get("system", ""))
    if tokenizer is None:
        raise ValueError("a chat prompt needs the tokenizer (for its chat template)")
    return tokenizer.apply_chat_template(chat_messages(row), tokenize=False, add_generation_prompt=True)


def build_completion(row: Mapping[str, Any], prompt_cfg: Mapping[str, Any], tokenizer) -> str:
    """What the model learns to produce after the prompt: the answer as the template writes it, ending in EOS.

    Raw templates: `prompt.completion` filled in (seed C: answer + " " + EOS). Chat templates: the conversation with the answer as
    the assistant turn, minus the prompt, cut after the first EOS (ChatML writes a newline after it).
    """
    eos = tokenizer.eos_token
    if prompt_cfg["format"] == "raw":
        return prompt_cfg.get("completion", "{output}{eos}").replace("{output}", row["output"]).replace("{eos}", eos)
    prompt = build_prompt(row, prompt_cfg, tokenizer)
    conversation = chat_messages(row) + [{"role": "assistant", "content": row["output"]}]
    full = tokenizer.apply_chat_template(conversation, tokenize=False)
    if not full.startswith(prompt):
        raise HatetuneError("the chat template does not render the prompt as the start of the conversation, so "
                            "prompt and answer cannot be split; choose another template", field="model.chat_template")
    completion = full[len(prompt):]
    end = completion.find(eos)
    return completion[:end + len(eos)] if end >= 0 else completion + eos


def adds_special_tokens(prompt_cfg: Mapping[str, Any]) -> bool:
    """Whether the tokenizer adds its special tokens (BOS) to the text.

    A chat template writes BOS itself (adding it again gives seed B's double BOS); a raw template relies on the
    tokenizer's BOS, as seed C's trainer did.
    """
    return prompt_cfg["format"] == "raw"


def encode_row(row: Mapping[str, Any], prompt_cfg: Mapping[str, Any], tokenizer) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) of a row: prompt + completion tokenised together, split where the prompt ends.

    A token that straddles the boundary (SentencePiece's `▁Hate` after a prompt ending in a space) belongs to
    the answer. Fails on a double BOS (a raw template that writes BOS itself).
    """
    prompt = build_prompt(row, prompt_cfg, tokenizer)
    encoded = tokenizer(prompt + build_completion(row, prompt_cfg, tokenizer),
                        add_special_tokens=adds_special_tokens(prompt_cfg), return_offsets_mapping=True)
    ids, offsets = encoded["input_ids"], encoded["offset_mapping"]
    bos = tokenizer.bos_token_id
    if bos is not None and len(ids) > 1 and ids[0] == bos and ids[1] == bos:
        raise HatetuneError("the prompt starts with two BOS tokens: a raw template must not write BOS (the "
                            "tokenizer adds it)", field="task.prompt.template")
    split = next((i for i, (_, end) in enumerate(offsets) if end > len(prompt)), len(ids))
    return ids[:split], ids[split:]


def encode_prompt(row: Mapping[str, Any], prompt_cfg: Mapping[str, Any], tokenizer,
                  answer_start: str = PROBE_ANSWER) -> list[int]:
    """The prompt ids of a row exactly as training tokenises them, without its answer.

    Where the prompt ends in a space (SentencePiece), the split depends on how the answer begins: pass a typical
    answer as `answer_start` (evaluation passes a label, which is what training saw there).
    """
    return encode_row({**row, "output": answer_start}, prompt_cfg, tokenizer)[0]


def answer_length(labels: Iterable[str], prompt_cfg: Mapping[str, Any], tokenizer) -> int:
    """Tokens of the longest label's completion (+ EOS): what evaluation reserves of the cutoff for the answer."""
    row = alpaca_row("", "", "", "")
    return max(len(encode_row({**row, "output": label}, prompt_cfg, tokenizer)[1]) for label in labels)


def fit_to_cutoff(prompt_ids: list[int], answer_len: int, cutoff_len: int) -> tuple[list[int], bool]:
    """The prompt cut so that it and an answer of `answer_len` tokens fit in `cutoff_len`; whether it was cut.

    An over-long prompt loses tokens from its middle (the end of the post): its start (system turn,
    instruction) and its last PROMPT_TAIL_TOKENS (end of the user turn, assistant header) survive.
    """
    budget = max(cutoff_len - answer_len, 0)
    if len(prompt_ids) <= budget:
        return list(prompt_ids), False
    tail = min(PROMPT_TAIL_TOKENS, budget // 2)
    return list(prompt_ids[:budget - tail]) + (list(prompt_ids[len(prompt_ids) - tail:]) if tail else []), True


def prompt_text(row: Mapping[str, Any], prompt_cfg: Mapping[str, Any], tokenizer, answer_start: str,
                answer_len: int, cutoff_len: int) -> tuple[str, bool]:
    """The prompt of `row` as text for a server that tokenises it itself (Ollama, vLLM, llama.cpp), meant to give
    the ids evaluation feeds the model (`encode_prompt` cut by `fit_to_cutoff`); and whether it was cut.

    The text is `build_prompt`'s when it tokenises to those ids; without its trailing whitespace when that belongs
    to the answer's first token (a raw template ending in a space, SentencePiece: training saw `▁Hate`); otherwise
    (a cut prompt) the text of the kept ids, which a server re-tokenising it may split differently at the cut.
    A BOS the tokenizer adds is left to the server (the exported GGUF's `add_bos_token` says the same).
    """
    special = adds_special_tokens(prompt_cfg)
    ids, cut = fit_to_cutoff(encode_prompt(row, prompt_cfg, tokenizer, answer_start), answer_len, cutoff_len)
    if not cut:
        prompt = build_prompt(row, prompt_cfg, tokenizer)
        for text in (prompt, prompt.rstrip()):
            if tokenizer(text, add_special_tokens=special)["input_ids"] == ids:
                return text, False
    if special and ids and ids[0] == tokenizer.bos_token_id:
        ids = ids[1:]
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False), cut


def alpaca_rows(table: Iterable[Mapping[str, Any]], prompt_cfg: Mapping[str, Any],
                extra_keys: Sequence[str] = ()) -> Iterator[dict]:
    """Canonical rows (id, text, label, ...) -> Alpaca rows with the task's instruction and system prompt, plus
    the row's `extra_keys` (whom a post targets, a test case's functionality: for per-group results; no prompt
    reads them)."""
    for row in table:
        yield {**alpaca_row(prompt_cfg["instruction"], row["text"], row["label"], prompt_cfg.get("system") or "",
                            id=row["id"]), **{key: row[key] for key in extra_keys}}


def extra_keys(row: Mapping[str, Any]) -> list[str]:
    """The keys of an Alpaca row beyond the prompt's and its id: per-group metadata, never part of a prompt."""
    return [key for key in row if key not in ALPACA_KEYS and key != "id"]
