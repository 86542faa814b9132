"""A merged Llama model written as a llama.cpp GGUF file with the `gguf` package alone, and loaded back.

llama.cpp's own converter (convert_hf_to_gguf.py) is not on PyPI, so this writes what it would for a Llama model:
llama.cpp's tensor names, q/k rows permuted to GGML's RoPE layout, the `llama.*` hyperparameters computed from the
model's config, and `output.weight` only when the head differs from the embedding (transformers' GGUF loader
ties the two exactly when the file has no `output.weight`; llama.cpp falls back to `token_embd` too). Everything
else in the header (the tokenizer's vocabulary and merges, special tokens, general.*) is copied from a source GGUF
of the same base model, the offline mirror's file, with two deliberate changes:
- `tokenizer.chat_template`: the template hatetune trained with (it may be a pinned one, `model.chat_template`);
- `tokenizer.ggml.add_bos_token`: whether hatetune's tokenisation adds BOS (`prompts.adds_special_tokens`: not
  for chat templates, which write it themselves), so llama.cpp tokenises a prompt as training did.

Scope: LlamaForCausalLM (SmolLM2, Llama 2/3 without rope scaling) without linear biases. Rows that are not a
multiple of Q8_0's 32-value block fall back to F16, as llama.cpp does; norms and 1-D tensors stay F32. The
writer holds the quantized tensors in memory (fine for the CPU-sized models; a 7B export needs ~8 GB).
"""
from __future__ import annotations

import functools
import re
import time
from collections import Counter
from pathlib import Path
from typing import Mapping, Optional

from ..errors import HatetuneError
from ..gguf_reading import fast_gguf_reading
from ..io import atomic_path, sha256_file
from ..models import contiguous_head_input

# Source keys never copied: the reader's GGUF.* pseudo-fields, the architecture (the writer writes it first),
# the encoding fields (rewritten for the new file), alignment and split bookkeeping.
_SKIP_KEYS = re.compile(r"^(GGUF\.|split\.|general\.(architecture|file_type|quantization_version|alignment)$)")


def qtypes():
    """qtype -> (GGML type of the 2-D weights, general.file_type). F32 is lossless (a control for checks)."""
    import gguf

    return {"Q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
            "F16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
            "F32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32)}


def permute_qk(w, n_head: int, n_head_kv: Optional[int] = None):
    """llama.cpp's LlamaModel.permute: per head, q/k rows from HF's rotate-half RoPE layout to GGML's interleaved
    pairs (q: n_head heads, k: n_head_kv). transformers' GGUF loader undoes it."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama_hparams(config) -> dict:
    """{key: (value, GGUF type)} of the llama.* header values that describe the weights, from the HF config."""
    import gguf

    u32, f32 = gguf.GGUFValueType.UINT32, gguf.GGUFValueType.FLOAT32
    # transformers 5 keeps rope_theta in rope_parameters (rope_scaling is an alias of it, set even without scaling)
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise HatetuneError(f"rope scaling {rope.get('rope_type')!r} is not supported by the GGUF export: use "
                            "llama.cpp's convert_hf_to_gguf.py on the merged model", field="model")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise HatetuneError("linear biases are not supported by the GGUF export", field="model")
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    kv = {"llama.block_count": (config.num_hidden_layers, u32),
          "llama.context_length": (config.max_position_embeddings, u32),
          "llama.embedding_length": (config.hidden_size, u32),
          "llama.feed_forward_length": (config.intermediate_size, u32),
          "llama.attention.head_count": (n_head, u32),
          "llama.attention.head_count_kv": (config.num_key_value_heads or n_head, u32),
          "llama.rope.freq_base": (float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))), f32),
          "llama.attention.layer_norm_rms_epsilon": (float(config.rms_norm_eps), f32),
          "llama.vocab_size": (config.vocab_size, u32),
          "llama.rope.dimension_count": (head_dim, u32)}
    if head_dim * n_head != config.hidden_size:  # llama.cpp assumes hidden / heads unless told
        kv["llama.attention.key_length"] = kv["llama.attention.value_length"] = (head_dim, u32)
    return kv


@functools.lru_cache(maxsize=4)
def _source_kvs(path: str, mtime_ns: int) -> tuple:
    """(key, value, type, sub_type) of a GGUF's header, in order. Cached: `contents()` of SmolLM2's 49k tokens and
    merges takes seconds."""
    import gguf

    with fast_gguf_reading():
        fields = gguf.GGUFReader(path).fields
    return tuple((k, f.contents(), f.types[0], f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None)
                 for k, f in fields.items())


def source_header(path: str | Path) -> dict:
    """{key: (value, type, sub_type)} of a GGUF file's header."""
    path = Path(path).resolve()
    return {k: (v, t, s) for k, v, t, s in _source_kvs(str(path), path.stat().st_mtime_ns)}


def header_overrides(tokenizer, add_bos: bool) -> dict:
    """The header values hatetune sets itself (see the module docstring): {key: (value, type)}."""
    import gguf

    found = {"tokenizer.ggml.add_bos_token": (bool(add_bos), gguf.GGUFValueType.BOOL)}
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        found["tokenizer.chat_template"] = (tokenizer.chat_template, gguf.GGUFValueType.STRING)
    return found


def write_gguf(model, source_gguf: str | Path, out_path: str | Path, qtype: str = "Q8_0",
               overrides: Optional[Mapping[str, tuple]] = None) -> dict:
    """Write the merged LlamaForCausalLM `model` as a GGUF at `out_path` (atomically); return a summary:
    bytes, sha256, seconds, qtype, tied, tensor types, and the `llama.*` values that differ from the source's."""
    import gguf
    import torch

    target, file_type = qtypes()[qtype]
    config = model.config
    if config.model_type != "llama":
        raise HatetuneError(f"the GGUF export supports the llama architecture, not {config.model_type!r}: use "
                            "llama.cpp's convert_hf_to_gguf.py on the merged model", field="model")
    header = source_header(source_gguf)
    if header["general.architecture"][0] != "llama":
        raise HatetuneError("the source GGUF is not a llama-architecture file", file=str(source_gguf))
    n_tokens = len(header["tokenizer.ggml.tokens"][0])
    if n_tokens != config.vocab_size:  # token_embd rows must match the vocabulary
        raise HatetuneError(f"the source GGUF has {n_tokens} tokens, the model {config.vocab_size}",
                            file=str(source_gguf))
    start = time.perf_counter()
    hparams, extra, changes = llama_hparams(config), dict(overrides or {}), {}
    with atomic_path(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        for key, (value, vtype, sub_type) in header.items():
            if _SKIP_KEYS.match(key):
                continue
            if key in extra:
                (value, vtype), sub_type = extra.pop(key), None
            elif key in hparams:
                new, vtype = hparams.pop(key)
                if value != new and not (isinstance(new, float) and abs(value - new) <= 1e-6 * abs(new)):
                    changes[key] = [value, new]
                value = new
            writer.add_key_value(key, value, vtype, sub_type=sub_type)
        for key, (value, vtype) in {**hparams, **extra}.items():  # keys the source lacked
            if key in hparams:
                changes[key] = [None, value]
            writer.add_key_value(key, value, vtype)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        types = _add_tensors(writer, model, target)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    out_path = Path(out_path)
    tied = torch.equal(model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    return {"bytes": out_path.stat().st_size, "sha256": sha256_file(out_path), "qtype": qtype, "tied": tied,
            "seconds": round(time.perf_counter() - start, 1), "tensor_types": dict(types),
            "hparam_changes": changes}


def _add_tensors(writer, model, target) -> Counter:
    import gguf
    import torch

    config = model.config
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = torch.equal(model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    # by name: when tied, the head *is* the embedding parameter, which must still be written as token_embd
    head_name = next(n for n, m in model.named_modules() if m is model.get_output_embeddings()) + ".weight"
    types = Counter()
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == head_name:
            continue
        stem, suffix = hf_name.rsplit(".", 1)
        name = names.get_name(stem)
        if name is None:
            raise HatetuneError(f"no GGUF tensor name for {hf_name}", field="model")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        if name.endswith((".attn_q", ".attn_k")):  # to llama.cpp's RoPE row order
            data = permute_qk(data, n_head, n_head if name.endswith("q") else n_kv)
        qt = gguf.GGMLQuantizationType.F32 if data.ndim <= 1 or name.endswith("_norm") else target
        try:
            quantized = gguf.quants.quantize(data, qt)
        except gguf.QuantError:  # rows not a multiple of the 32-value block: F16, as llama.cpp does
            qt = gguf.GGMLQuantizationType.F16
            quantized = gguf.quants.quantize(data, qt)
        writer.add_tensor(f"{name}.{suffix}", quantized, raw_dtype=qt)
        types[qt.name] += 1
    return types


def load_gguf(path: str | Path):
    """(model in float32, tokenizer) of a GGUF file, as transformers loads it (`gguf_file=`): the weights
    dequantized, the tokenizer rebuilt from the header; left padding, pad = EOS where it has none."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    with fast_gguf_reading():
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    contiguous_head_input(model)  # as models.load_model does: ~10x faster label scoring on CPU
    return model.eval(), tokenizer
