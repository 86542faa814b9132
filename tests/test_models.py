"""hatetune.models on a real tiny Llama: base model sources, real bitsandbytes 4-bit loading, adapters, and the
regression test for bitsandbytes' CPU 4-bit gradient trap."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hatetune import config, model_sources, models, paths, training
from hatetune.errors import HatetuneError
from support import mirror_dir

ROOT = Path(__file__).resolve().parents[1]


GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # the mirror's SOURCE.md


@pytest.fixture
def cfg(tiny_model_dir):
    return config.load([f"model.path={tiny_model_dir}"], ROOT / "params.yaml")


def _linear4bit_layers(model):
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def test_base_model_dir_is_per_model(cfg):
    assert paths.base_model_dir(cfg.model.name) == Path("models/base") / cfg.model.name
    assert paths.base_source_file(cfg.model.name) == Path("models/base") / f"{cfg.model.name}.source.json"


def test_local_folder_becomes_a_pointer(cfg, tiny_model_dir, tmp_path):
    out = tmp_path / "base"
    source = model_sources.resolve(cfg.model, mirror=None)
    assert source["kind"] == "local" and source["path"] == str(Path(tiny_model_dir).resolve())
    assert "model.safetensors" in source["files"]
    model_sources.materialise(source, out, mirror=None)
    assert sorted(p.name for p in out.iterdir()) == [model_sources.SOURCE_FILE]  # no weights copied
    assert models.model_source(out) == (str(Path(tiny_model_dir).resolve()), None)


def test_local_folder_without_config_fails_naming_the_key(cfg, tmp_path):
    cfg.model.path = str(tmp_path)
    with pytest.raises(HatetuneError, match="model.path") as err:
        model_sources.resolve(cfg.model, mirror=None)
    assert str(tmp_path) in str(err.value)


def test_missing_gguf_in_the_mirror_entry_fails_naming_the_file(cfg, tmp_path):
    cfg.model.path = None
    (tmp_path / cfg.model.mirror_name).mkdir()
    with pytest.raises(HatetuneError, match="model.gguf_file") as err:
        model_sources.resolve(cfg.model, mirror=tmp_path)
    assert cfg.model.gguf_file in str(err.value)


def test_a_mirror_without_an_entry_for_the_model_leaves_it_to_the_hub(cfg, tmp_path):
    cfg.model.path = None
    assert model_sources.resolve(cfg.model, mirror=tmp_path)["kind"] == "hub"


def test_mirror_and_hub_resolve_to_different_sources(cfg, tmp_path):
    """The record that makes DVC rerun base_model when the mirror is switched on or off."""
    cfg.model.path = None
    gguf = tmp_path / cfg.model.mirror_name / cfg.model.gguf_file
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF fake weights")
    from_mirror = model_sources.resolve(cfg.model, mirror=tmp_path)
    from_hub = model_sources.resolve(cfg.model, mirror=None)  # a pinned commit sha: no network needed
    assert from_mirror["kind"] == "gguf" and len(from_mirror["sha256"]) == 64
    assert from_hub == {"kind": "hub", "hub_id": cfg.model.hub_id, "revision": cfg.model.revision,
                        "requested_revision": cfg.model.revision}
    gguf.write_bytes(b"GGUF other weights")  # an edited mirror file is a different source too
    assert model_sources.resolve(cfg.model, mirror=tmp_path)["sha256"] != from_mirror["sha256"]
    with pytest.raises(HatetuneError, match="changed since the sources stage"):
        model_sources.materialise(from_mirror, tmp_path / "base", mirror=tmp_path)


def test_missing_base_model_says_which_stage_to_run(tmp_path):
    with pytest.raises(HatetuneError, match="base_model"):
        models.model_source(tmp_path)


def test_hub_model_is_a_pointer_to_the_hub_cache(tiny_model_dir, tmp_path):
    """A fake Hub cache (the real on-disk layout) stands in for the network; loading through it is real."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    script = f"""
import json, sys
sys.path.insert(0, {str(ROOT)!r})
from hatetune import config, model_sources, models
cfg = config.load(["model.hub_id=org/tiny", "model.revision={sha}", "model.mirror_name=null"], {str(ROOT / 'params.yaml')!r})
info = model_sources.resolve(cfg.model, None)
model_sources.materialise(info, {str(tmp_path / 'base')!r}, None)
model = models.load_model(cfg.model, {str(tmp_path / 'base')!r}, quantize=False)
tok = models.load_tokenizer({str(tmp_path / 'base')!r})
print(json.dumps({{"info": info, "files": sorted(p.name for p in __import__("pathlib").Path({str(tmp_path / 'base')!r}).iterdir()),
                  "vocab": model.config.vocab_size, "pad": tok.pad_token}}))
"""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["info"] == {"kind": "hub", "hub_id": "org/tiny", "revision": sha, "requested_revision": sha}
    assert out["files"] == [model_sources.SOURCE_FILE]
    assert out["vocab"] > 0 and out["pad"] == "<|im_end|>"


@pytest.mark.parametrize("revision, key", [("0123456789abcdef0123456789abcdef01234567", "model.hub_id"),
                                           ("main", "model.revision")])
def test_unreachable_hub_model_fails_in_one_clear_line(tmp_path, revision, key):
    """A pinned commit resolves offline and fails at the download; a branch cannot even be resolved."""
    script = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})
from hatetune import config, model_sources
from hatetune.errors import exit_on_error
cfg = config.load(["model.hub_id=org/absent", "model.revision={revision}", "model.mirror_name=null"], {str(ROOT / 'params.yaml')!r})
exit_on_error(lambda: model_sources.materialise(model_sources.resolve(cfg.model, None), {str(tmp_path / 'base')!r}, None))()
"""
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_secret_value"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr and "org/absent" in proc.stderr and proc.stderr.strip().count("\n") == 0
    assert "hf_secret_value" not in proc.stderr + proc.stdout
    assert not (tmp_path / "base").exists()


def test_tokenizer_pads_with_eos_when_it_has_no_pad(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, folder)
    config_file = folder / "tokenizer_config.json"
    data = json.loads(config_file.read_text())
    data.pop("pad_token", None)
    config_file.write_text(json.dumps(data))
    assert AutoTokenizer.from_pretrained(folder).pad_token is None
    tok = models.load_tokenizer(folder, padding_side="right")
    assert tok.pad_token == tok.eos_token and tok.padding_side == "right"
    assert models.load_tokenizer(folder).padding_side == "left"


def test_load_model_4bit_is_real_nf4_double_quant_in_eval_mode(cfg, tiny_model_dir):
    model = models.load_model(cfg.model, tiny_model_dir)
    layers = _linear4bit_layers(model)
    assert len(layers) == 2 * 7  # 2 decoder layers x (q, k, v, o, gate, up, down)
    state = layers[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested  # nested = double quantization
    assert layers[0].compute_dtype == torch.bfloat16
    assert not model.training
    assert model.lm_head.weight.dtype == torch.bfloat16  # the head stays unquantized


def test_load_model_unquantized_is_bf16_without_4bit_layers(cfg, tiny_model_dir):
    model = models.load_model(cfg.model, tiny_model_dir, quantize=False)
    assert not _linear4bit_layers(model)
    assert model.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    cfg.model.quantization.load_in_4bit = False
    assert not _linear4bit_layers(models.load_model(cfg.model, tiny_model_dir, quantize=True))


def test_output_head_gets_a_contiguous_input_when_logits_are_trimmed(cfg, tiny_model_dir):
    model = models.load_model(cfg.model, tiny_model_dir)
    seen = []
    model.lm_head.register_forward_hook(lambda module, args, out: seen.append(args[0].is_contiguous()))
    tok = models.load_tokenizer(tiny_model_dir)
    with torch.no_grad():
        logits = model(**tok(["hate not hate people", "the"], return_tensors="pt", padding=True),
                       logits_to_keep=2).logits
    assert logits.shape[1] == 2 and seen == [True]


def test_trainable_model_gets_the_cpu_guard(cfg, tiny_model_dir):
    model = models.load_model(cfg.model, tiny_model_dir, trainable=True)
    assert model.training
    assert all(not m.support_avx512bf16_for_cpu for m in _linear4bit_layers(model))


def test_saved_adapter_reloads_with_the_same_outputs(cfg, tiny_model_dir, tmp_path):
    from peft import PeftModel

    model = training.attach_lora(models.load_model(cfg.model, tiny_model_dir, trainable=True), cfg)
    with torch.no_grad():  # make the adapter non-trivial (lora_B starts at zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.eval()
    tok = models.load_tokenizer(tiny_model_dir)
    batch = tok(["hate not hate", "the post"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**batch).logits
    training.save_adapter(model, tok, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json",
            "chat_template.jinja"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    reloaded = models.load_model(cfg.model, tiny_model_dir, adapter_dir=tmp_path / "adapter")
    assert isinstance(reloaded, PeftModel) and not reloaded.training
    with torch.no_grad():
        got = reloaded(**batch).logits
    # bf16 logits of a few units (both models compute through kept dequantised 4-bit weights on CPU)
    assert (got.float() - expected.float()).abs().max() < 0.1
    base = models.load_model(cfg.model, tiny_model_dir)
    with torch.no_grad():
        assert (base(**batch).logits.float() - expected.float()).abs().max() > 1.0  # the adapter matters
    # the adapter carries its tokenizer and chat template
    assert models.load_tokenizer(tmp_path / "adapter").chat_template == tok.chat_template


def test_missing_adapter_fails_naming_the_folder(cfg, tiny_model_dir, tmp_path):
    with pytest.raises(HatetuneError, match="adapter_config.json") as err:
        models.load_model(cfg.model, tiny_model_dir, adapter_dir=tmp_path)
    assert str(tmp_path) in str(err.value)


# ------------------------------------------------------------------------------ the CPU 4-bit gradient trap
def _lora_grads(model, batch) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model.train()
    out = model(**batch)
    out.logits.float().pow(2).mean().backward()
    return {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if "lora_" in n}


def _reference_grads(cfg, tiny_model_dir, quantized, batch) -> dict[str, torch.Tensor]:
    """fp32 copy of the model whose linear weights are the dequantised 4-bit ones, with the same LoRA weights."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    ref = training.attach_lora(models.load_model(cfg.model, tiny_model_dir, quantize=False, trainable=True,
                                                 dtype="float32"), cfg)
    ref_params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                weight = bnbf.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
                ref_params[f"{name}.weight"].copy_(weight)
        for name, p in quantized.named_parameters():
            if "lora_" in name:
                ref_params[name].copy_(p.float())
    return _lora_grads(ref, batch)


def _relative_errors(got, expected) -> list[float]:
    return [float((got[n] - expected[n]).norm() / expected[n].norm()) for n in expected if expected[n].norm() > 0]


def _quantized_lora_model(cfg, tiny_model_dir, guard: bool):
    cfg.lora.dropout = 0.0  # the same forward in both models (dropout masks would differ)
    cfg.model.quantization.cpu_dequantize_once = False  # the trap lives in bitsandbytes' own CPU path
    model = training.attach_lora(models.load_model(cfg.model, tiny_model_dir, trainable=True, dtype="float32"), cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # non-zero, so gradients flow into every lora_A too
                p.normal_(0, 0.1)
    if not guard:  # what bitsandbytes does unless hatetune intervenes
        for m in _linear4bit_layers(model):
            m.support_avx512bf16_for_cpu = True
    return model


def test_lora_gradients_after_eval_forward_match_dequantised_fp32_reference(cfg, tiny_model_dir):
    """Regression test for the trap: an eval-mode no-grad forward (a Trainer eval loop, a generate() check)
    must not switch the 4-bit layers to a kernel without backward."""
    cfg.model.quantization.compute_dtype = "float32"  # isolate the kernel from bf16 rounding
    model = _quantized_lora_model(cfg, tiny_model_dir, guard=True)
    tok = models.load_tokenizer(tiny_model_dir, padding_side="right")
    batch = tok(["hate not hate people", "the social media post"], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        model(**batch)  # the forward that repacks the weights when unguarded
    got = _lora_grads(model, batch)
    expected = _reference_grads(cfg, tiny_model_dir, model, batch)
    assert len(got) == 2 * 7 * 2
    assert max(_relative_errors(got, expected)) < 1e-3


@pytest.mark.skipif(not __import__("bitsandbytes").functional.has_avx512bf16(),
                    reason="the trap needs a CPU with avx512_bf16")
@pytest.mark.filterwarnings("ignore:.*autograd kernel was not registered")  # torch noticing the trap
def test_without_the_guard_the_gradients_are_wrong(cfg, tiny_model_dir):
    """Shows the regression test above can fail: unguarded, the same steps give wrong LoRA gradients."""
    cfg.model.quantization.compute_dtype = "float32"
    model = _quantized_lora_model(cfg, tiny_model_dir, guard=False)
    tok = models.load_tokenizer(tiny_model_dir, padding_side="right")
    batch = tok(["hate not hate people", "the social media post"], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        model(**batch)
    got = _lora_grads(model, batch)
    # the reference is built from the weights as they were before the repack
    fresh = _quantized_lora_model(cfg, tiny_model_dir, guard=True)
    with torch.no_grad():
        for (name, p), (_, q) in zip(fresh.named_parameters(), model.named_parameters()):
            if "lora_" in name:
                p.copy_(q)
    expected = _reference_grads(cfg, tiny_model_dir, fresh, batch)
    assert max(_relative_errors(got, expected)) > 0.1
    # and the guard repairs a model that was already repacked
    assert models.disable_cpu_4bit_repack(model) == 14
    assert max(_relative_errors(_lora_grads(model, batch), expected)) < 1e-2


# ------------------------------------------------------------------------ 4-bit weights dequantised once
def _seeded_lora_model(cfg, tiny_model_dir, once: bool):
    cfg.lora.dropout = 0.0
    cfg.model.quantization.cpu_dequantize_once = once
    model = training.attach_lora(models.load_model(cfg.model, tiny_model_dir, trainable=True), cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


def test_dequantize_once_is_bitwise_bitsandbytes_own_cpu_path(cfg, tiny_model_dir):
    """Kept dequantised weights change speed only: the same logits, loss and LoRA gradients to the bit as
    bitsandbytes' own 4-bit forward and backward, in bf16, in training and in a no-grad evaluation."""
    own = _seeded_lora_model(cfg, tiny_model_dir, once=False)
    once = _seeded_lora_model(cfg, tiny_model_dir, once=True)
    layers = _linear4bit_layers(once)
    assert len(layers) == 14 and all("_dequantized_once_forward" in repr(m.forward) for m in layers)
    assert not any("_dequantized_once_forward" in repr(m.forward) for m in _linear4bit_layers(own))
    tok = models.load_tokenizer(tiny_model_dir, padding_side="right")
    batch = tok(["hate not hate people", "the social media post is long"], return_tensors="pt", padding=True)
    for step in range(2):  # the second step runs on the kept weights
        expected, got = _lora_grads(own, batch), _lora_grads(once, batch)
        assert len(got) == 2 * 7 * 2 and all(torch.equal(got[n], expected[n]) for n in expected), step
    with torch.no_grad():
        own.eval(), once.eval()
        assert torch.equal(once(**batch).logits, own(**batch).logits)
    # what is kept is the 4-bit weight's dequantised value, in the compute dtype, and never saved
    kept = layers[0].__dict__["_dequantized_weight"]
    assert kept.dtype == torch.bfloat16 and kept.shape == layers[0].weight.quant_state.shape
    assert once.state_dict().keys() == own.state_dict().keys()


def test_dequantize_once_off_keeps_bitsandbytes_repacked_inference_kernel(cfg, tiny_model_dir):
    cfg.model.quantization.cpu_dequantize_once = False
    model = models.load_model(cfg.model, tiny_model_dir)
    assert all(m.support_avx512bf16_for_cpu for m in _linear4bit_layers(model)) == \
        __import__("bitsandbytes").functional.has_avx512bf16()
    assert not any("_dequantized_once_forward" in repr(m.forward) for m in _linear4bit_layers(model))


# -------------------------------------------------------------------------------------------- real GGUF
@pytest.mark.slow
@pytest.mark.skipif(mirror_dir() is None, reason="needs the offline mirror (../shared/mirror)")
def test_mirror_gguf_converts_to_a_loadable_hf_folder(tmp_path):
    cfg = config.load([f"download.mirror={mirror_dir()}"], ROOT / "params.yaml")
    out = tmp_path / "base"
    info = model_sources.resolve(cfg.model, mirror_dir())
    assert info["kind"] == "gguf" and info["sha256"] == GGUF_SHA256  # the mirror's SOURCE.md
    model_sources.materialise(info, out, mirror_dir())
    assert json.loads((out / model_sources.SOURCE_FILE).read_text()) == info
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pkl")) for n in names)  # safetensors only
    tok = models.load_tokenizer(out)
    mirror_tok = json.loads((mirror_dir() / cfg.model.mirror_name / "tokenizer.json").read_text())
    assert tok("Hate speech is not OK.")["input_ids"] == [mirror_tok["model"]["vocab"][t] for t in
                                                          tok.tokenize("Hate speech is not OK.")]
    assert "<|im_start|>" in tok.chat_template and tok.eos_token == "<|im_end|>"
    model = models.load_model(cfg.model, out, quantize=False)
    assert model.dtype == torch.bfloat16 and sum(p.numel() for p in model.parameters()) == 134_515_008
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        answer = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(answer[0, ids["input_ids"].shape[1]:])
