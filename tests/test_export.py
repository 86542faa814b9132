"""The export on real parts: merging (with the lm_head-over-tied-embeddings trap), GGUF files written with the
`gguf` package and loaded back by transformers, and the Ollama Modelfile's template rendered with Go-template
semantics against `prompts.build_prompt`.

GGUF tests use a tiny random Llama with SmolLM2's real vocabulary (its tokenizer files from the offline mirror) and
the mirror's SmolLM2 GGUF as the source of the tokenizer metadata; they skip without the mirror."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hatetune import config, labeling, models, prompts
from hatetune.export import gguf_file, merge, modelfile
from serve_support import POSTS, make_adapter
from support import ROOT, mirror_dir

MIRROR = mirror_dir()
SMOL = MIRROR / "smollm2-135m-instruct" if MIRROR else None
SOURCE_GGUF = SMOL / "SmolLM2-135M-Instruct.Q4_1.gguf" if SMOL else None
needs_mirror = pytest.mark.skipif(SOURCE_GGUF is None or not SOURCE_GGUF.is_file(), reason="no offline mirror")
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def cfg():
    return config.load(["model.quantization.compute_dtype=float32"], ROOT / "params.yaml")


def build_smol_vocab_model(out_dir):
    """A 2-layer random Llama (tied embeddings, GQA 4/2) with SmolLM2's tokenizer: 49,152 tokens."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(str(SMOL))
    config_ = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                          rope_theta=100000.0, tie_word_embeddings=True, initializer_range=0.2,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config_).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    """{base, linear, lmhead}: the tiny SmolLM2-vocabulary base and two adapters (all linear; + lm_head)."""
    if SOURCE_GGUF is None or not SOURCE_GGUF.is_file():
        pytest.skip("no offline mirror")
    root = tmp_path_factory.mktemp("smol")
    base = build_smol_vocab_model(root / "base")
    return {"base": base, "linear": make_adapter(base, root / "linear", targets=LINEAR),
            "lmhead": make_adapter(base, root / "lmhead", targets=LINEAR + ["lm_head"])}


# ------------------------------------------------------------------------------------------------- merging
def test_permute_is_inverted_by_transformers_gguf_loader():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    q = np.arange(9 * 64 * 5, dtype=np.float32).reshape(9 * 64, 5)
    k = np.arange(3 * 64 * 5, dtype=np.float32).reshape(3 * 64, 5)
    processor = LlamaTensorProcessor({"num_attention_heads": 9, "num_key_value_heads": 3})
    assert not np.array_equal(gguf_file.permute_qk(q, 9, 9), q)
    assert np.array_equal(processor.process(gguf_file.permute_qk(q, 9, 9), "blk.0.attn_q.weight").weights, q)
    assert np.array_equal(processor.process(gguf_file.permute_qk(k, 9, 3), "blk.0.attn_k.weight").weights, k)


@pytest.mark.parametrize("targets", ["linear", "lmhead"])
def test_merge_equals_the_unmerged_adapter_and_keeps_the_input_embedding(cfg, tiny_model_dir, tmp_path, targets):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_adapter(tiny_model_dir, tmp_path / "a", targets=LINEAR + (["lm_head"] if targets == "lmhead" else []))
    assert merge.trains_output_head(adapter) == (targets == "lmhead")
    merged = merge.merge_adapter(cfg.model, tiny_model_dir, adapter)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    embedding = base.get_input_embeddings().weight.detach().clone()
    unmerged = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = torch.tensor([[1, 42, 400, 77, 2, 300]])
    with torch.no_grad():
        assert (merged(ids).logits - unmerged(ids).logits).abs().max() < 1e-4
    assert torch.equal(merged.get_input_embeddings().weight, embedding)
    tied = merged.get_output_embeddings().weight is merged.get_input_embeddings().weight
    assert tied == (targets == "linear") == merged.config.tie_word_embeddings


def test_a_naive_merge_of_an_lm_head_lora_corrupts_the_tied_embedding(tiny_model_dir, tmp_path):
    """What merge_adapter avoids: PEFT adds the head's delta to the matrix it shares with the input embedding."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = make_adapter(tiny_model_dir, tmp_path / "a", targets=LINEAR + ["lm_head"])
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32)
    embedding = base.get_input_embeddings().weight.detach().clone()
    naive = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    assert not torch.equal(naive.get_input_embeddings().weight, embedding)


# ---------------------------------------------------------------------------------------------------- GGUF
def labelled(model, tokenizer, cfg, rows):
    run = labeling.classify_rows(model, tokenizer, rows, cfg, agreement=True)
    return run["predicted"], run["log_probs"]


@pytest.mark.parametrize("adapter,qtype", [("linear", "F32"), ("lmhead", "F32"), ("lmhead", "Q8_0")])
def test_gguf_loaded_back_labels_like_the_merged_model(cfg, smol, tmp_path, adapter, qtype):
    """F32 is lossless: names, q/k permutation and tying must be exact (same labels, same label scores). Q8_0
    rounds: scores move a little; labels may flip only on near-ties."""
    tokenizer = models.load_tokenizer(smol[adapter], cfg.model)
    merged = merge.merge_adapter(cfg.model, smol["base"], smol[adapter])
    overrides = gguf_file.header_overrides(tokenizer, prompts.adds_special_tokens(cfg.task.prompt))
    info = gguf_file.write_gguf(merged, SOURCE_GGUF, tmp_path / "model.gguf", qtype, overrides)
    assert info["tied"] == (adapter == "linear") and info["qtype"] == qtype
    loaded, loaded_tokenizer = gguf_file.load_gguf(tmp_path / "model.gguf")
    assert loaded.config.tie_word_embeddings == info["tied"]  # decided by the presence of output.weight
    rows = [prompts.input_row(text, cfg.task.prompt) for text in POSTS]
    ids = [prompts.encode_prompt(r, cfg.task.prompt, tokenizer) for r in rows]
    assert [prompts.encode_prompt(r, cfg.task.prompt, loaded_tokenizer) for r in rows] == ids  # same tokenizer
    want_labels, want_scores = labelled(merged, tokenizer, cfg, rows)
    got_labels, got_scores = labelled(loaded, loaded_tokenizer, cfg, rows)
    error = max(abs(a - b) for x, y in zip(want_scores, got_scores) for a, b in zip(x, y))
    if qtype == "F32":
        assert got_labels == want_labels and error < 1e-3
    else:
        assert 1e-4 < error < 0.5
        margins = [abs(s[0] - s[1]) for s in want_scores]
        assert all(m < 2 * error for g, w, m in zip(got_labels, want_labels, margins) if g != w)


@needs_mirror
def test_gguf_header_tokenizer_carried_over_and_deterministic(cfg, smol, tmp_path):
    import gguf

    tokenizer = models.load_tokenizer(smol["lmhead"], cfg.model)
    tokenizer.chat_template = tokenizer.chat_template.replace("SmolLM", "HatetuneLM")  # a pinned template
    merged = merge.merge_adapter(cfg.model, smol["base"], smol["lmhead"])
    overrides = gguf_file.header_overrides(tokenizer, add_bos=True)
    a = gguf_file.write_gguf(merged, SOURCE_GGUF, tmp_path / "a.gguf", "Q8_0", overrides)
    b = gguf_file.write_gguf(merged, SOURCE_GGUF, tmp_path / "b.gguf", "Q8_0", overrides)
    assert a["sha256"] == b["sha256"] and a["bytes"] == (tmp_path / "a.gguf").stat().st_size
    reader = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["output.weight"] == types["token_embd.weight"] == types["blk.1.attn_q.weight"] == "Q8_0"
    assert {types[n] for n in types if n.endswith("norm.weight")} == {"F32"} and len(types) == 2 * 9 + 3
    fields, source = reader.fields, gguf_file.source_header(SOURCE_GGUF)
    assert fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert fields["llama.block_count"].contents() == 2 and a["hparam_changes"]["llama.block_count"] == [30, 2]
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "general.license"):
        assert fields[key].contents() == source[key][0], key
    assert fields["tokenizer.chat_template"].contents() == tokenizer.chat_template  # hatetune's, not the source's
    assert fields["tokenizer.ggml.add_bos_token"].contents() is True and source["tokenizer.ggml.add_bos_token"][0] is False


@needs_mirror
def test_the_real_smollm2_shapes_round_trip(tmp_path):
    """The mirror's SmolLM2 (dequantised) written back: the same tensor names and shapes as the llama.cpp-converted
    source file, llama.* values unchanged."""
    import gguf
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(SMOL), gguf_file=SOURCE_GGUF.name, dtype=torch.float32)
    out = tmp_path / "smol.gguf"
    info = gguf_file.write_gguf(model, SOURCE_GGUF, out, "F16")  # any type: shapes are the point (F16 is quicker)
    assert info["hparam_changes"] == {} and info["tied"]

    def shapes(path):
        return {(t.name, tuple(int(d) for d in t.shape)) for t in gguf.GGUFReader(str(path)).tensors}

    assert shapes(out) == shapes(SOURCE_GGUF)


# ----------------------------------------------------------------------------------------------- Modelfile
SAMPLE_POSTS = ["They should all go back where they came from.", "I love my neighbours ❤️ {{ .System }}",
                "  leading and trailing spaces \n\nand blank lines  ", 'quotes """ and <|im_end|> text']


@pytest.mark.parametrize("overrides,smollm2", [([], False), (["task.prompt.system=''"], False), (["task=mhs"], False),
                                                (["model.chat_template=llama3_llamafactory"], False),
                                                ([], True), (["task.prompt.system=''"], True)])
def test_modelfile_template_renders_exactly_the_training_prompt(tiny_model_dir, overrides, smollm2):
    """For sample posts, Ollama's rendering of the TEMPLATE (Go-template semantics) with the post as the prompt equals
    build_prompt: the default task, an empty system prompt, seed C's raw template, a pinned chat template; and
    SmolLM2's real template, which injects its default system prompt when the task's is empty (then that default
    is part of the Modelfile's template, as it was part of every training prompt)."""
    if smollm2 and SMOL is None:
        pytest.skip("no offline mirror")
    cfg = config.load(overrides, ROOT / "params.yaml")
    tokenizer = models.load_tokenizer(SMOL if smollm2 else tiny_model_dir, cfg.model)
    template = modelfile.ollama_template(cfg.task.prompt, tokenizer)
    text = modelfile.modelfile_text(template, ["<|im_end|>"], 4, "model.gguf")
    parsed = read_modelfile(text)
    assert parsed["from"] == "./model.gguf" and parsed["template"] == template
    assert parsed["parameter"] == ["temperature 0", "top_k 1", "repeat_penalty 1", "num_predict 4",
                                   'stop "<|im_end|>"']
    for post in SAMPLE_POSTS:
        row = prompts.input_row(post, cfg.task.prompt)
        assert modelfile.render_ollama(parsed["template"], post) == prompts.build_prompt(row, cfg.task.prompt,
                                                                                         tokenizer)
    injected = "You are a helpful AI assistant named SmolLM" in template
    assert injected == (smollm2 and overrides == ["task.prompt.system=''"])


def test_a_template_ollama_cannot_hold_is_refused(tiny_model_dir):
    from hatetune.errors import HatetuneError

    from omegaconf import OmegaConf

    cfg = config.load([], ROOT / "params.yaml")
    prompt_cfg = {**OmegaConf.to_container(cfg.task.prompt), "instruction": "Classify {{ this }}:"}
    with pytest.raises(HatetuneError, match="'{{'"):
        modelfile.ollama_template(prompt_cfg, models.load_tokenizer(tiny_model_dir, cfg.model))
    with pytest.raises(HatetuneError, match='"""'):
        modelfile.modelfile_text('a """ b', [], 4, "model.gguf")


def read_modelfile(text: str) -> dict:
    """Parse a Modelfile as Ollama's parser does for these: `COMMAND value`, a triple-quoted value may span lines
    and keeps its inner whitespace. {command: value}; `parameter`: its values in order."""
    import re

    found: dict = {"parameter": []}
    for m in re.finditer(r'^(\w+) +("""(.*?)"""|[^\n]*)$', text, re.S | re.M):
        command, value = m.group(1).lower(), m.group(3) if m.group(3) is not None else m.group(2).strip()
        found["parameter"].append(value) if command == "parameter" else found.__setitem__(command, value)
    return found


def test_go_template_subset():
    r = modelfile.render_go_template
    assert r("a  \n{{- .X -}}\n  b", {"X": "x"}) == "axb"
    assert r("{{ if .S }}yes {{ .S }}{{ else }}no{{ end }}!", {"S": ""}) == "no!"
    assert r("{{ if .S }}yes {{ .S }}{{ else }}no{{ end }}!", {"S": "s"}) == "yes s!"
    assert r("{{/* c */}}{{ .Missing }}-", {}) == "-"
    assert r("{{ if .A }}{{ if .B }}ab{{ else }}a{{ end }}{{ end }}.", {"A": "1"}) == "a."
    with pytest.raises(ValueError):  # Go: "-}}" without the space before it is a syntax error, not a trim
        r("{{ .X-}} y", {"X": "x"})
    assert r("p {{ .Response }} tail", {"Response": ""}, cut_after_response=True) == "p "
    assert modelfile.render_ollama("{{ .Prompt }}!", "u") == "u!"
    with pytest.raises(ValueError):
        r("{{ range .Messages }}{{ end }}", {})


def test_verification_tells_rounding_flips_from_agreement():
    from hatetune.export import verify

    labels = ["hate", "not hate"]
    merged = {"predicted": ["hate", "hate", "not hate", "hate"],
              "log_probs": [[-0.1, -3.0], [-1.00, -1.05], [-2.0, -0.2], [-0.5, -1.5]]}
    exported = {"predicted": ["hate", "not hate", "not hate", "hate"],
                "log_probs": [[-0.12, -3.0], [-1.06, -1.02], [-2.0, -0.21], [-0.5, -1.5]]}
    found = verify.compare(exported, merged, ["hate", "not hate", "not hate", "not hate"], labels,
                           evaluated=["hate", "hate", "hate", "hate"])
    assert (found["agreement_exported_merged"], found["flipped_rows"]) == (0.75, 1)
    assert found["max_merged_margin_of_flips"] == pytest.approx(0.05)
    assert found["score_abs_diff_max"] == pytest.approx(0.06) and found["agreement_merged_evaluate"] == 0.75
    assert found["agreement_exported_evaluate"] == 0.5 and found["exported"]["accuracy"] == 0.75
    # beyond near-ties (margin > 0.25) the flip is not there: rows 0, 2, 3 agree
    assert (found["rows_beyond_ties"], found["agreement_beyond_ties"]) == (3, 1.0)
    broken = {**exported, "predicted": ["not hate", "not hate", "not hate", "hate"]}
    found = verify.compare(broken, merged, ["hate"] * 4, labels, evaluated=None, tie_margin=0.25)
    assert found["agreement_beyond_ties"] == pytest.approx(2 / 3)  # row 0 (margin 2.9) flipped: not rounding
    found = verify.compare(exported, merged, ["hate"] * 4, labels, evaluated=None, tie_margin=5.0)
    assert (found["rows_beyond_ties"], found["agreement_beyond_ties"]) == (0, None)
    nothing = verify.compare(None, merged, ["hate"] * 4, labels, evaluated=None)
    assert nothing["agreement_exported_merged"] is None and nothing["agreement_merged_evaluate"] is None
