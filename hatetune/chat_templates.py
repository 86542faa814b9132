"""Chat templates pinned in hatetune, for models whose Hub template is not what their seed trained with.

`model.chat_template` names one of these (null: the tokenizer's own template). `models.load_tokenizer` installs
it on the tokenizer, so training, evaluation, the saved adapter (its `chat_template.jinja`), serving and export
all render the same text. Golden strings of every template are in tests/test_prompts.py.
"""
from __future__ import annotations

# LLaMA-Factory's `llama3` template (src/llamafactory/data/template.py, v0.9.x), the one seed B trained with.
# Unlike the Hugging Face Llama-3.1 template it writes no "Cutting Knowledge Date / Today Date" lines into the
# system turn, and no system turn at all when the system prompt is empty. The assistant header follows every
# user turn (LLaMA-Factory's user formatter carries it), so the generation prompt needs no flag.
LLAMA3_LLAMAFACTORY = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% endif %}"
    "{% if system_message is defined %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\n' + system_message + '<|eot_id|>' }}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '<|start_header_id|>user<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + '<|eot_id|>' }}{% endif %}"
    "{% endfor %}"
)

# The Llama-2 chat format as the Decoding Hate paper's prompts show it (seed A; prompts/stop.md of
# palomapiot/decoding-hate): `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n{user} [/INST]`, one newline after
# <</SYS>> where Meta's Hub template writes two. The answer follows as in Meta's template: " {answer} </s>".
LLAMA2_DECODING_HATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.first and system_message is defined %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{{ bos_token + '[INST] ' + content + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

TEMPLATES = {"llama3_llamafactory": LLAMA3_LLAMAFACTORY, "llama2_decoding_hate": LLAMA2_DECODING_HATE}
