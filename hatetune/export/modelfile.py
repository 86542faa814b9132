"""An Ollama Modelfile whose TEMPLATE renders exactly the prompt hatetune trained with.

The template is derived from `prompts.build_prompt` itself: the prompt of a post made of a marker, with the marker
replaced by `{{ .Prompt }}`. So `ollama run <name> "<post>"` sends the model the training prompt of that post: the
task's instruction and system prompt are part of the template (an empty system prompt gives whatever the chat
template does without one: SmolLM2's injects its default system prompt, exactly as in training), and a client
sends only the post. Ollama uses a template without `.Messages` once per turn and cuts the last turn after
`{{ .Response }}`, so the prompt ends where the answer starts. The decoding parameters are evaluation's: greedy
(temperature 0 and top_k 1) with no repeat penalty (Ollama's default 1.1 over the last 64 tokens would push down
label words that the prompt contains), at most eval.max_new_tokens tokens, stopping at the tokenizer's EOS.

`render_go_template` evaluates the subset of Go's text/template these templates use, so tests can check that
Ollama's rendering equals `build_prompt`.
"""
from __future__ import annotations

import re
from typing import Mapping, Sequence

from ..errors import HatetuneError
from ..prompts import build_prompt, input_row

MARKER = "HATETUNE_POST_MARKER_7f3a"


def ollama_template(prompt_cfg: Mapping, tokenizer) -> str:
    """The Ollama TEMPLATE of the task's prompt: `build_prompt` with the post replaced by `{{ .Prompt }}`."""
    prompt = build_prompt(input_row(MARKER, prompt_cfg), prompt_cfg, tokenizer)
    if prompt.count(MARKER) != 1:
        raise HatetuneError("the prompt template does not contain the post exactly once", field="task.prompt")
    before, after = prompt.split(MARKER)
    if "{{" in before + after:
        raise HatetuneError("the prompt contains '{{', which an Ollama (Go) template cannot hold as text",
                            field="task.prompt")
    return before + "{{ .Prompt }}" + after + "{{ .Response }}"


def modelfile_text(template: str, stops: Sequence[str], max_new_tokens: int, gguf_name: str) -> str:
    """The Modelfile: FROM the GGUF beside it, the TEMPLATE, evaluation's greedy decoding."""
    if '"""' in template:  # Ollama's parser has no escape inside a triple-quoted value
        raise HatetuneError('the prompt contains """, which a Modelfile cannot quote', field="task.prompt")
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""',
             "PARAMETER temperature 0", "PARAMETER top_k 1", "PARAMETER repeat_penalty 1",
             f"PARAMETER num_predict {int(max_new_tokens)}"]
    for stop in stops:
        if '"' in stop or not stop.isprintable():
            raise HatetuneError(f"stop token {stop!r} cannot be written in a Modelfile", field="model")
        lines.append(f'PARAMETER stop "{stop}"')
    return "\n".join(lines) + "\n"


def stop_tokens(tokenizer, eos_ids) -> list[str]:
    """The EOS token strings evaluation stops at (`inference.eos_token_ids`), in id order."""
    return [tokenizer.convert_ids_to_tokens(int(i)) for i in sorted(eos_ids)]


# A Go text/template subset: text, {{ .Field }}, {{ if .Field }} / {{ else }} / {{ end }}, {{/* comments */}} and
# the trim markers "{{- " / " -}}" (drop all whitespace before / after the action, as text/template does).
_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
_WS = " \t\r\n"


def render_go_template(template: str, values: Mapping[str, str], cut_after_response: bool = False) -> str:
    """Render with Go's semantics (a missing key renders "", an empty string is false); any other action raises.
    `cut_after_response`: stop right after {{ .Response }}, as Ollama does for the turn the model answers."""
    out, stack, pos, trim, cut = [], [], 0, False, False  # stack: one "branch taken" flag per open {{ if }}
    for m in [*_ACTION.finditer(template), None]:
        text = template[pos:m.start() if m else None]
        text = text.rstrip(_WS) if m and m.group(1) else text
        if all(stack) and not cut:
            out.append(text.lstrip(_WS) if trim else text)
        if m is None:
            break
        pos, trim, action = m.end(), bool(m.group(3)), m.group(2)
        if f := re.fullmatch(r"\.(\w+)", action):
            if all(stack) and not cut:
                out.append(str(values.get(f.group(1), "")))
                cut = cut_after_response and f.group(1) == "Response"
        elif f := re.fullmatch(r"if \.(\w+)", action):
            stack.append(bool(values.get(f.group(1))))
        elif action in ("else", "end") and stack:
            stack[-1:] = [not stack[-1]] if action == "else" else []
        elif not re.fullmatch(r"/\*.*\*/", action, re.S):
            raise ValueError(f"unsupported Go template action {{{{ {action} }}}}")
    if stack:
        raise ValueError("unclosed {{ if }}")
    return "".join(out)


def render_ollama(template: str, prompt: str, system: str = "") -> str:
    """The prompt Ollama builds for a one-turn request (it appends {{ .Response }} to a template without one)."""
    if not re.search(r"\{\{-?\s*\.Response\b", template):
        template += "{{ .Response }}"
    return render_go_template(template, {"System": system, "Prompt": prompt, "Response": ""}, True)
