"""hatetune.prompts: every seed's prompt, rendered with the template the seed trained with, golden-string exact;
joint tokenisation of prompt and answer; the double-BOS guard; the truncation rule."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from support import mirror_dir
from hatetune import config, models, prompts
from hatetune.errors import HatetuneError
from tiny_model import build_tokenizer

DYNAHATE_INSTRUCTION = ("You are a helpful Assistant. Your task is to classify the social media post as hate or "
                        "not hate. Post:")
DYNAHATE_SYSTEM = "Strictly respond only with the label: 'hate' or 'not hate'."
ROW = {"instruction": DYNAHATE_INSTRUCTION, "input": "a post", "output": "hate", "system": DYNAHATE_SYSTEM}
CHAT = {"format": "chat"}
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


@pytest.fixture(scope="module")
def tasks():
    return {name: config.validate(config.compose([f"task={name}"])).task for name in ("dynahate", "mhs")}


def _saved_tokenizer(tmp_path, model_name: str, **kw):
    """A tiny tokenizer saved to disk, loaded back the way the pipeline loads it: `models.load_tokenizer` with the
    model preset's config, which installs the pinned chat template."""
    build_tokenizer(**kw).save_pretrained(tmp_path)
    model_cfg = config.validate(config.compose([f"model={model_name}"])).model
    return models.load_tokenizer(tmp_path, model_cfg)


@pytest.fixture
def llama3_tokenizer(tmp_path):
    return _saved_tokenizer(tmp_path, "llama31_8b_instruct", special=["<unk>", *LLAMA3_SPECIAL],
                            bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, unk="<unk>", chat_template=None)


@pytest.fixture
def llama2_tokenizer(tmp_path):
    return _saved_tokenizer(tmp_path, "llama2_13b_chat", style="metaspace", special=["<unk>", "<s>", "</s>"],
                            bos="<s>", eos="</s>", pad=None, unk="<unk>", chat_template=None)


@pytest.fixture
def sentencepiece_tokenizer():
    """Mistral-like: Metaspace pre-tokenizer (a space belongs to the next token), BOS added by the tokenizer."""
    return build_tokenizer("metaspace", special=["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", pad=None,
                           unk="<unk>", chat_template=None)


# ------------------------------------------------------------------------------------------- Alpaca rows
def test_dynahate_alpaca_row_is_seed_b(tasks):
    [row] = prompts.alpaca_rows([{"id": "acl1", "text": "a post", "label": "not hate", "split": "dev",
                                  "group": "acl1"}], tasks["dynahate"].prompt)
    assert row == {"instruction": DYNAHATE_INSTRUCTION, "input": "a post", "output": "not hate",
                   "system": DYNAHATE_SYSTEM, "id": "acl1"}
    assert list(row) == ["instruction", "input", "output", "system", "id"]


def test_mhs_prompt_and_completion_are_seed_c_whitespace_exact(tasks, sentencepiece_tokenizer):
    [row] = prompts.alpaca_rows([{"id": "7", "text": "some text {with braces}", "label": "Neutral"}],
                                tasks["mhs"].prompt)
    expected = ("[INST] ### Instruction: Below is a short text that you need to classify into one of three "
                "classes: Hate / Neutral / Supportive. \n### Text: some text {with braces} \n### Answer: [/INST] ")
    assert prompts.build_prompt(row, tasks["mhs"].prompt) == expected
    assert row["system"] == "" and row["output"] == "Neutral"
    # seed C's train.py: prompt + label + " " + eos
    assert prompts.build_completion(row, tasks["mhs"].prompt, sentencepiece_tokenizer) == "Neutral </s>"


# ------------------------------------------------------------------- the templates the seeds trained with
@pytest.mark.skipif(mirror_dir() is None, reason="needs the offline mirror (../shared/mirror)")
def test_smollm2_chatml_golden_and_its_default_system_prompt(tasks):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(mirror_dir() / "smollm2-135m-instruct")
    prompt_cfg = tasks["dynahate"].prompt
    assert prompts.build_prompt(ROW, prompt_cfg, tok) == (
        f"<|im_start|>system\n{DYNAHATE_SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{DYNAHATE_INSTRUCTION}\na post<|im_end|>\n<|im_start|>assistant\n")
    assert prompts.build_completion(ROW, prompt_cfg, tok) == "hate<|im_end|>"  # the newline after EOS is not trained
    # an empty system prompt sends no system turn, and SmolLM2's template then injects its own
    assert prompts.build_prompt({**ROW, "system": ""}, prompt_cfg, tok) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        f"<|im_start|>user\n{DYNAHATE_INSTRUCTION}\na post<|im_end|>\n<|im_start|>assistant\n")
    prompt_ids, answer_ids = prompts.encode_row(ROW, prompt_cfg, tok)
    assert tok.decode(answer_ids) == "hate<|im_end|>" and prompt_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert prompt_ids.count(tok.bos_token_id) == 3  # <|im_start|> opens each turn: no extra BOS in front


def test_llama31_preset_renders_llamafactory_llama3_golden(llama3_tokenizer):
    """Seed B trained with LLaMA-Factory's `llama3` template: no "Cutting Knowledge Date" lines."""
    prompt = prompts.build_prompt(ROW, CHAT, llama3_tokenizer)
    assert prompt == ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + DYNAHATE_SYSTEM
                      + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n" + DYNAHATE_INSTRUCTION
                      + "\na post<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "Cutting Knowledge" not in prompt
    assert prompts.build_completion(ROW, CHAT, llama3_tokenizer) == "hate<|eot_id|>"
    assert prompts.build_prompt({**ROW, "system": ""}, CHAT, llama3_tokenizer) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + DYNAHATE_INSTRUCTION
        + "\na post<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")  # no system block at all
    prompt_ids, answer_ids = prompts.encode_row(ROW, CHAT, llama3_tokenizer)
    bos = llama3_tokenizer.bos_token_id
    assert prompt_ids[0] == bos and prompt_ids.count(bos) == 1  # the template's BOS only: no double BOS
    assert llama3_tokenizer.decode(answer_ids) == "hate<|eot_id|>"


def test_llama2_preset_renders_the_decoding_hate_format_golden(llama2_tokenizer):
    """Seed A: `<s>[INST] <<SYS>>\\n{system}\\n<</SYS>>\\n{user} [/INST]`, as the paper's prompts show."""
    assert prompts.build_prompt(ROW, CHAT, llama2_tokenizer) == (
        f"<s>[INST] <<SYS>>\n{DYNAHATE_SYSTEM}\n<</SYS>>\n{DYNAHATE_INSTRUCTION}\na post [/INST]")
    assert prompts.build_completion(ROW, CHAT, llama2_tokenizer) == " hate </s>"
    assert prompts.build_prompt({**ROW, "system": ""}, CHAT, llama2_tokenizer) == (
        f"<s>[INST] {DYNAHATE_INSTRUCTION}\na post [/INST]")
    prompt_ids, answer_ids = prompts.encode_row(ROW, CHAT, llama2_tokenizer)
    tokens = llama2_tokenizer.convert_ids_to_tokens(answer_ids)
    assert tokens[0].startswith("▁") and tokens[-1] == "</s>"  # the answer's leading space is its own: "▁hate"
    assert prompt_ids.count(llama2_tokenizer.bos_token_id) == 1


def test_unknown_chat_template_fails_at_config_validation():
    with pytest.raises(config.ConfigError, match="model.chat_template"):
        config.validate(config.compose(["model.chat_template=vicuna"]))


# --------------------------------------------------------------------------------- tokenising together
def test_raw_template_ending_in_a_space_gives_no_stray_token(tasks, sentencepiece_tokenizer):
    """Seed C's prompt ends in "[/INST] ": tokenised alone, SentencePiece makes that space a lone `▁` token that
    training never saw before an answer; tokenised together with the answer, the space starts `▁Hate`."""
    tok, prompt_cfg = sentencepiece_tokenizer, tasks["mhs"].prompt
    row = {"instruction": prompt_cfg.instruction, "input": "the post", "output": "Hate", "system": ""}
    prompt_ids, answer_ids = prompts.encode_row(row, prompt_cfg, tok)
    assert tok.convert_ids_to_tokens(prompt_ids)[-1] == "▁[/INST]"
    assert tok.convert_ids_to_tokens(answer_ids) == ["▁Hate", "▁", "</s>"]  # seed C's " " before EOS
    alone = tok(prompts.build_prompt(row, prompt_cfg), add_special_tokens=True)["input_ids"]
    assert tok.convert_ids_to_tokens(alone)[-1] == "▁" and alone[:-1] == prompt_ids  # what the split avoids
    assert prompt_ids[0] == tok.bos_token_id and prompt_ids.count(tok.bos_token_id) == 1
    for label in ("Hate", "Neutral", "Supportive"):  # evaluation's prompt ids are training's, for every label
        assert prompts.encode_prompt(row, prompt_cfg, tok, answer_start=label) == \
            prompts.encode_row({**row, "output": label}, prompt_cfg, tok)[0]


def test_raw_template_that_writes_bos_itself_is_a_double_bos_error(tasks, sentencepiece_tokenizer):
    prompt_cfg = OmegaConf.merge(tasks["mhs"].prompt, {"template": "<s>[INST] {input} [/INST] "})
    with pytest.raises(HatetuneError, match="two BOS") as err:
        prompts.encode_row({"instruction": "", "input": "x", "output": "Hate", "system": ""}, prompt_cfg,
                           sentencepiece_tokenizer)
    assert err.value.field == "task.prompt.template"


def test_chat_template_that_cannot_be_split_is_an_error():
    tok = build_tokenizer(chat_template="{% for m in messages|reverse %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(HatetuneError, match="model.chat_template"):
        prompts.build_completion(ROW, CHAT, tok)


# ------------------------------------------------------------------------------------------- truncation
def test_fit_to_cutoff_keeps_the_start_and_the_last_tokens():
    ids = list(range(100))
    assert prompts.fit_to_cutoff(ids, 3, 200) == (ids, False)
    cut, truncated = prompts.fit_to_cutoff(ids, 3, 50)  # budget 47: 16 tail tokens, 31 head tokens
    assert truncated and len(cut) == 47
    assert cut == ids[:31] + ids[-16:]
    cut, _ = prompts.fit_to_cutoff(ids, 3, 13)  # a tiny budget keeps half of it as tail
    assert cut == ids[:5] + ids[-5:]


# ---------------------------------------------------------------------------------------- Stop-Hate (seed A)
STOPHATE_USER = "Tell me what is your answer of the following message?\nMessage:"


def test_stophate_stop_prompt_system_renders_the_papers_llama2_prompt_golden(llama2_tokenizer):
    """The base + stop prompt system with the preset's template is exactly prompts/stop.md's LLaMA2 block, the
    post on the line after "Message:", then " [/INST]"."""
    task = config.validate(config.compose(["task=stophate"])).task
    row = {"instruction": task.prompt.instruction, "input": "a post", "system": task.prompted_systems.stop_prompt}
    paper = (
        "<s>[INST] <<SYS>>\n"
        "You are a conversational assistant. Your aim is to make a safe space for everyone to communicate. \n"
        "Whenever someone tries to talk with you raising hate speech (which is language characterized by offensive, \n"
        "derogatory, humiliating, or insulting discourse that promotes violence, discrimination, or hostility towards \n"
        "individuals or groups based on attributes such as race, religion, ethnicity, or gender) you need to stop the "
        "conversation.\n"
        'Therefore, whenever you are giving a message fitting that description you must reply "I cannot engage with '
        'this conversation."\n'
        "<</SYS>>\n"
        "Tell me what is your answer of the following message?\n"
        "Message:\n")
    assert prompts.build_prompt(row, CHAT, llama2_tokenizer) == paper + "a post [/INST]"
    assert prompts.build_completion({**row, "output": "I cannot engage with this conversation."}, CHAT,
                                    llama2_tokenizer) == " I cannot engage with this conversation. </s>"


def test_stophate_prompts_are_the_papers_files_verbatim():
    """task.prompted_systems hold the <<SYS>> text of the paper's prompt files (trailing spaces included)."""
    mirror = mirror_dir()
    if mirror is None or not (mirror / "decoding-hate").is_dir():
        pytest.skip("the offline mirror with decoding-hate/ is not here")
    task = config.validate(config.compose(["task=stophate"])).task
    for key, name in (("stop_prompt", "prompt_stop.md"), ("counter_speech_prompt", "prompt_counter-speech.md")):
        text = (mirror / "decoding-hate" / name).read_text(encoding="utf-8")
        block = text[text.index("<<SYS>>\n") + 8:text.index("\n<</SYS>>")]
        assert task.prompted_systems[key] == block
        assert text[text.index("<</SYS>>\n") + 9:].startswith(task.prompt.instruction + "\n")


def test_dialogue_history_renders_as_earlier_turns(llama2_tokenizer):
    row = {"instruction": STOPHATE_USER, "input": "third claim", "system": "",
           "history": [["first claim", "first reply"], ["second claim", "second reply"]]}
    assert prompts.build_prompt(row, CHAT, llama2_tokenizer) == (
        "<s>[INST] first claim [/INST] first reply </s><s>[INST] second claim [/INST] second reply </s>"
        f"<s>[INST] {STOPHATE_USER}\nthird claim [/INST]")
    chatml = build_tokenizer()
    assert prompts.build_prompt(row, CHAT, chatml) == (
        "<|im_start|>user\nfirst claim<|im_end|>\n<|im_start|>assistant\nfirst reply<|im_end|>\n"
        "<|im_start|>user\nsecond claim<|im_end|>\n<|im_start|>assistant\nsecond reply<|im_end|>\n"
        f"<|im_start|>user\n{STOPHATE_USER}\nthird claim<|im_end|>\n<|im_start|>assistant\n")
    prompt_ids, answer_ids = prompts.encode_row({**row, "output": "a reply"}, CHAT, chatml)
    assert chatml.decode(answer_ids) == "a reply<|im_end|>"  # the loss is on the last answer only
    with pytest.raises(HatetuneError, match="task.prompt.format"):
        prompts.build_prompt(row, {"format": "raw", "template": "{input}"})


# --------------------------------------------------------------------------------- prompts sent as text
def test_input_row_is_the_convert_stage_row_of_a_post(tasks):
    [converted] = prompts.alpaca_rows([{"id": "x", "text": "a post", "label": "hate"}], tasks["dynahate"].prompt)
    converted.pop("id")
    assert prompts.input_row("a post", tasks["dynahate"].prompt) == {**converted, "output": ""}


@pytest.mark.parametrize("task", ["dynahate", "mhs"])
def test_prompt_text_tokenises_to_the_ids_evaluation_feeds(tasks, task, sentencepiece_tokenizer):
    """What a remote server gets: text that tokenises to encode_prompt's ids. ChatML (byte-level) is build_prompt
    itself; seed C's raw template ends in a space that training folds into `▁Hate`, so its text drops that space;
    a cut prompt is the text of the kept ids."""
    cfg = tasks[task].prompt
    tokenizer = build_tokenizer() if task == "dynahate" else sentencepiece_tokenizer
    labels = list(tasks[task].labels.names)
    special = prompts.adds_special_tokens(cfg)
    for post in ("they are vermin", " ".join(["people"] * 300)):
        row = prompts.input_row(post, cfg)
        text, cut = prompts.prompt_text(row, cfg, tokenizer, labels[0], 3, 128)
        ids, expected_cut = prompts.fit_to_cutoff(prompts.encode_prompt(row, cfg, tokenizer, labels[0]), 3, 128)
        assert cut == expected_cut == (len(post) > 100)
        assert tokenizer(text, add_special_tokens=special)["input_ids"] == ids
        if not cut:
            full = prompts.build_prompt(row, cfg, tokenizer)
            assert text == (full if task == "dynahate" else full.rstrip()) and full.endswith(" ") == (task == "mhs")
