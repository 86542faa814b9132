"""Base models and adapters: where a base model comes from (Hub / local folder / offline GGUF), loading it with
4-bit quantization, attaching a saved LoRA adapter, and the guard against bitsandbytes' CPU 4-bit trap.

The `base_model` stage writes `models/base/<model.name>/` (see `base_model_dir`) in one of two forms:
- a full Hugging Face folder (bf16 safetensors, tokenizer, chat template), converted once from the offline
  mirror's GGUF file (small models only: it becomes a DVC-cached output), or
- a pointer, `hatetune_base.json`, naming a Hub id + resolved commit (weights stay in the Hub cache, never in
  the DVC cache) or a local Hugging Face folder (`model.path`).
`load_model` / `load_tokenizer` accept that folder whatever its form, so no other code needs to know which.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from . import sources
from .errors import HatetuneError
from .io import atomic_path, write_json

BASE_ROOT = Path("models/base")
POINTER_FILE = "hatetune_base.json"
# What a Hub snapshot needs for loading: weights as safetensors only (never pickles), configs, tokenizer files.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken"]
DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
          "float32": "float32", "fp32": "float32", "uint8": "uint8"}


# ------------------------------------------------------------------------------------------------ paths
def base_model_dir(cfg) -> Path:
    """`models/base/<model.name>`: the output of the base_model stage, input of train / evaluate."""
    return BASE_ROOT / cfg.model.name


def torch_dtype(name: str):
    import torch

    try:
        return getattr(torch, DTYPES[str(name)])
    except KeyError:
        raise HatetuneError(f"unknown dtype {name!r} (known: {', '.join(DTYPES)})") from None


# ----------------------------------------------------------------------------------- the base_model stage
def prepare_base_model(cfg, out_dir: str | Path) -> dict:
    """Materialise the base model of `cfg.model` at `out_dir`; return a summary (also the pointer's content).

    Order: `model.path` (local HF folder) > offline mirror GGUF (when a mirror is set and the model has a
    `mirror_name`) > the Hub (`hub_id` at `revision`, resolved to a commit sha).
    """
    model = cfg.model
    out_dir = Path(out_dir)
    mirror = sources.mirror_root(cfg.download.mirror)
    if model.get("path"):
        src = Path(model.path).expanduser()
        if not (src / "config.json").is_file():
            raise HatetuneError("not a Hugging Face model folder (no config.json)", file=str(src), field="model.path")
        info = {"source": "local", "path": str(src.resolve())}
        _write_pointer(out_dir, info)
    elif mirror is not None and model.mirror_name:
        if not model.gguf_file:
            raise HatetuneError("an offline mirror model needs model.gguf_file", field="model.gguf_file")
        gguf = mirror / model.mirror_name / model.gguf_file
        if not gguf.is_file():
            raise HatetuneError("GGUF file not found in the offline mirror", file=str(gguf), field="model.gguf_file")
        convert_gguf(gguf, out_dir, trust_remote_code=model.trust_remote_code)
        info = {"source": "gguf", "gguf_file": f"{model.mirror_name}/{model.gguf_file}"}
    else:
        sha = resolve_hub_revision(model.hub_id, model.revision)
        info = {"source": "hub", "hub_id": model.hub_id, "revision": sha, "requested_revision": model.revision}
        _write_pointer(out_dir, info)
    return info


def _write_pointer(out_dir: Path, info: Mapping[str, Any]) -> None:
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        write_json(tmp / POINTER_FILE, dict(info))


def resolve_hub_revision(hub_id: str, revision: str) -> str:
    """Download `hub_id@revision` into the Hub cache (safetensors only) and return the resolved commit sha.

    The token, if any, comes from $HF_TOKEN (read by huggingface_hub itself); it is never written anywhere.
    """
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(hub_id, revision=revision, allow_patterns=HUB_PATTERNS)
    except Exception as err:  # network, auth (gated models), unknown id: one clear line
        raise HatetuneError(f"cannot fetch {hub_id}@{revision} from the Hugging Face Hub "
                            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                            f"gated models need HF_TOKEN in the environment", field="model.hub_id") from None
    if not any(Path(path).glob("*.safetensors")):
        raise HatetuneError(f"{hub_id}@{revision} has no safetensors weights (pickle checkpoints are refused)",
                            field="model.hub_id")
    return Path(path).name  # .../snapshots/<commit sha>


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, trust_remote_code: bool = False) -> Path:
    """Dequantise a GGUF checkpoint once into a HF folder: bf16 safetensors, tokenizer, chat template.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the weights move into a freshly built
    model of the same config (without its `quantization_config`) which is then saved normally.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=trust_remote_code)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                  trust_remote_code=trust_remote_code)
    config = AutoConfig.from_pretrained(folder, gguf_file=name, trust_remote_code=trust_remote_code)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.bfloat16
    model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or set(missing) - tied:
        raise HatetuneError(f"GGUF weights do not match the model (missing {sorted(missing)[:3]}, "
                            f"unexpected {sorted(unexpected)[:3]})", file=str(gguf_path))
    model = model.to(torch.bfloat16)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


# ------------------------------------------------------------------------------------------------ loading
def read_pointer(model_dir: str | Path) -> Optional[dict]:
    """The pointer of a Hub / local base model, or None when `model_dir` is itself a HF folder."""
    pointer = Path(model_dir) / POINTER_FILE
    return json.loads(pointer.read_text(encoding="utf-8")) if pointer.is_file() else None


def model_source(model_dir: str | Path) -> tuple[str, Optional[str]]:
    """(name_or_path, revision) to pass to `from_pretrained` for a base_model stage output."""
    model_dir = Path(model_dir)
    pointer = read_pointer(model_dir)
    if pointer is None:
        if not (model_dir / "config.json").is_file():
            raise HatetuneError("no base model here: run the base_model stage (dvc repro base_model)",
                                file=str(model_dir))
        return str(model_dir), None
    if pointer["source"] == "hub":
        return pointer["hub_id"], pointer["revision"]
    return pointer["path"], None


def load_tokenizer(model_dir: str | Path, padding_side: str = "left", trust_remote_code: bool = False):
    """The tokenizer of a base model or adapter folder; pad = eos when the model has no pad token.

    Left padding for generation (batched greedy decoding), right padding for training.
    """
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if (model_dir / "adapter_config.json").is_file() and (model_dir / "tokenizer_config.json").is_file():
        name, revision = str(model_dir), None  # an adapter folder carries its tokenizer
    else:
        name, revision = model_source(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def quantization_config(model_cfg):
    """bitsandbytes 4-bit settings of `model.quantization` (nf4 / double quant / compute & storage dtypes)."""
    from transformers import BitsAndBytesConfig

    q = model_cfg.quantization
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=q.quant_type,
                              bnb_4bit_use_double_quant=q.double_quant,
                              bnb_4bit_compute_dtype=torch_dtype(q.compute_dtype),
                              bnb_4bit_quant_storage=torch_dtype(q.quant_storage))


def load_model(model_cfg, model_dir: str | Path, quantize: bool = True, adapter_dir: str | Path | None = None,
               trainable: bool = False, dtype: Optional[str] = None):
    """Load the base model in `model_dir` (a base_model stage output), optionally with a LoRA adapter.

    quantize and model.quantization.load_in_4bit: 4-bit per `quantization_config`, other weights in the compute
    dtype; otherwise all weights in `dtype` (default bf16). `adapter_dir`: a saved PEFT adapter, trainable only
    when `trainable`. The model is in eval mode unless `trainable`; trainable 4-bit models get the CPU guard
    (`disable_cpu_4bit_repack`), eval-only ones keep bitsandbytes' fast (and, without gradients, correct)
    repacked CPU kernel.
    """
    import torch
    from transformers import AutoModelForCausalLM

    name, revision = model_source(model_dir)
    four_bit = bool(quantize and model_cfg.quantization.load_in_4bit)
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": bool(model_cfg.trust_remote_code),
                              "use_safetensors": True}
    if four_bit:
        kwargs["quantization_config"] = quantization_config(model_cfg)
        kwargs["dtype"] = torch_dtype(dtype or model_cfg.quantization.compute_dtype)
    else:
        kwargs["dtype"] = torch_dtype(dtype or "bfloat16")
    if torch.cuda.is_available():  # one process per GPU (torchrun sets LOCAL_RANK)
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
    model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
    contiguous_head_input(model)
    if adapter_dir is not None:
        from peft import PeftModel

        if not (Path(adapter_dir) / "adapter_config.json").is_file():
            raise HatetuneError("no LoRA adapter here (adapter_config.json missing): run the train stage",
                                file=str(adapter_dir))
        model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=trainable)
    if trainable:
        model.train()
        disable_cpu_4bit_repack(model)
    else:
        model.eval()
    return model


def _make_contiguous(module, args):
    return (args[0].contiguous(), *args[1:])


def contiguous_head_input(model) -> None:
    """Feed the output head a contiguous input.

    With `logits_to_keep` (generation keeps 1 position, training the answer's) the head gets a strided slice
    of the hidden states, and torch's matmul then copies the whole vocab x hidden weight once per row of the
    batch (a bmm over an expanded weight): on SmolLM2 that was ~30% of a training step. A contiguous input
    makes it one plain matrix product.
    """
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_make_contiguous)


def disable_cpu_4bit_repack(model) -> int:
    """Guard against bitsandbytes' CPU 4-bit trap; return how many layers it touched.

    bnb 0.50 on CPUs with avx512_bf16: the first no-grad eval-mode forward repacks every `Linear4bit` into a
    layout whose kernel has no backward, so LoRA gradients of later training steps come out ~90% wrong while
    the loss looks normal. Turning the repack off (and undoing one that already happened) keeps training on
    the differentiable path. Must run before training and before any evaluation inside training.
    """
    try:
        import bitsandbytes as bnb
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse
    except ImportError:  # no bitsandbytes, no 4-bit layers
        return 0
    touched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            state = getattr(module.weight, "quant_state", None)
            if state is not None and getattr(state, "packing_format_for_cpu", False):
                module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                    module.weight.data, state)
                module.quant_state = module.weight.quant_state
            touched += 1
    return touched


def copy_tokenizer_files(model_dir: str | Path, out_dir: str | Path, trust_remote_code: bool = False) -> None:
    """Save the base model's tokenizer (with its chat template) beside an adapter, so the adapter is self-contained."""
    load_tokenizer(model_dir, "left", trust_remote_code).save_pretrained(out_dir)


def model_summary(model) -> dict:
    """Trainable and total parameter counts (4-bit weights counted as stored elements x 2)."""
    import torch

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total}


__all__ = ["base_model_dir", "prepare_base_model", "convert_gguf", "resolve_hub_revision",
           "load_tokenizer", "load_model", "quantization_config", "disable_cpu_4bit_repack", "contiguous_head_input",
           "model_source",
           "read_pointer", "copy_tokenizer_files", "model_summary"]
