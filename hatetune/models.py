"""Loading base models and adapters: tokenizer (with the model's pinned chat template), 4-bit quantization,
a saved LoRA adapter, and the guard against bitsandbytes' CPU 4-bit trap.

A base model folder is the base_model stage's output (see `hatetune.model_sources`): a Hugging Face folder, or a
pointer to the Hub cache / a local folder. `load_model` / `load_tokenizer` accept either, so no other code needs to
know which.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Optional

from .chat_templates import TEMPLATES
from .errors import HatetuneError
from .model_sources import SOURCE_FILE, trust_remote_code

DTYPES = {"bfloat16": "bfloat16", "bf16": "bfloat16", "float16": "float16", "fp16": "float16",
          "float32": "float32", "fp32": "float32", "uint8": "uint8"}


def torch_dtype(name: str):
    import torch

    try:
        return getattr(torch, DTYPES[str(name)])
    except KeyError:
        raise HatetuneError(f"unknown dtype {name!r} (known: {', '.join(DTYPES)})") from None


def model_source(model_dir: str | Path) -> tuple[str, Optional[str]]:
    """(name_or_path, revision) to pass to `from_pretrained` for a base_model stage output."""
    model_dir = Path(model_dir)
    if (model_dir / "config.json").is_file():
        return str(model_dir), None
    pointer = model_dir / SOURCE_FILE
    if not pointer.is_file():
        raise HatetuneError("no base model here: run the base_model stage (dvc repro base_model)", file=str(model_dir))
    source = json.loads(pointer.read_text(encoding="utf-8"))
    if source["kind"] == "hub":
        return source["hub_id"], source["revision"]
    return source["path"], None


def load_tokenizer(model_dir: str | Path, model_cfg=None, padding_side: str = "left"):
    """The tokenizer of a base model or adapter folder, with `model.chat_template` installed when set;
    pad = eos when the model has no pad token. Left padding for generation, right padding for training."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    if (model_dir / "tokenizer_config.json").is_file():  # a HF model folder, or an adapter carrying its tokenizer
        name, revision = str(model_dir), None
    else:  # a pointer to the Hub cache or a local folder
        name, revision = model_source(model_dir)
    trust = trust_remote_code(model_cfg) if model_cfg is not None else False
    tokenizer = AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust)
    template = model_cfg.get("chat_template") if model_cfg is not None else None
    if template:
        tokenizer.chat_template = TEMPLATES[template]
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
    when `trainable`. The model is in eval mode unless `trainable`. On CPU, 4-bit layers compute through a kept
    dequantised weight (`dequantize_once`, unless model.quantization.cpu_dequantize_once is false); trainable
    4-bit models always get the CPU guard (`disable_cpu_4bit_repack`), and without `dequantize_once` eval-only
    ones keep bitsandbytes' repacked CPU inference kernel.
    """
    import torch
    from transformers import AutoModelForCausalLM

    name, revision = model_source(model_dir)
    four_bit = bool(quantize and model_cfg.quantization.load_in_4bit)
    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code(model_cfg),
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
    if four_bit and not torch.cuda.is_available() and model_cfg.quantization.cpu_dequantize_once:
        disable_cpu_4bit_repack(model)
        dequantize_once(model)
    if trainable:
        model.train()
        disable_cpu_4bit_repack(model)
    else:
        model.eval()
    return model


def dequantize_once(model) -> int:
    """Run every 4-bit layer of `model` through one dequantised copy of its weight, kept; return how many.

    On CPU, bitsandbytes computes a 4-bit layer by dequantising the whole weight to the compute dtype and then
    calling `linear` (its gemm_4bit), at every forward, and dequantises again in the backward; the base is frozen,
    so that is the same tensor every time. Kept once, the same operations run on the same values: logits, losses
    and LoRA gradients are bitwise bitsandbytes' own (tests/test_models.py), training steps and label scoring run
    faster (bench/bench_dequantize_once.py), and the base's linear weights are held once more in the compute dtype
    (2 bytes per weight in bf16: +0.2 GB for SmolLM2-135M; `model.quantization.cpu_dequantize_once: false` for
    bitsandbytes' own path). Evaluation then computes exactly what training computed, where bitsandbytes' repacked
    CPU inference kernel rounds differently. Layers with a trainable bias keep bitsandbytes' forward.
    """
    import types

    import bitsandbytes as bnb

    touched = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and not (module.bias is not None and module.bias.requires_grad):
            module.forward = types.MethodType(_dequantized_once_forward, module)
            touched += 1
    return touched


def _dequantized_once_forward(self, x):
    """bitsandbytes' `Linear4bit.forward` on its CPU path (not repacked), with the dequantised weight kept."""
    import bitsandbytes.functional as bnbf
    from bitsandbytes.nn.modules import fix_4bit_weight_quant_state_from_module

    fix_4bit_weight_quant_state_from_module(self)
    if not self.compute_type_is_set:
        self.set_compute_type(x)
        self.compute_type_is_set = True
    input_dtype = x.dtype
    if self.compute_dtype is not None:
        x = x.to(self.compute_dtype)
    weight = self.__dict__.get("_dequantized_weight")  # a plain attribute: never in the state dict
    if weight is None or weight.dtype != x.dtype:
        weight = bnbf.dequantize_4bit(self.weight.data, self.weight.quant_state).to(x.dtype)
        self.__dict__["_dequantized_weight"] = weight
    bias = None if self.bias is None else self.bias.to(x.dtype)
    return _frozen_linear().apply(x, weight, bias).to(input_dtype)


@functools.cache
def _frozen_linear():
    """`linear` with a frozen weight and bias, whose input gradient is bitsandbytes' MatMul4Bit backward
    (`grad_output @ weight`), so gradients match bitsandbytes' bit for bit."""
    import torch

    class FrozenLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, weight, bias):
            ctx.save_for_backward(weight)
            return torch.nn.functional.linear(x, weight, bias)

        @staticmethod
        def backward(ctx, grad_output):
            (weight,) = ctx.saved_tensors
            grad_x = torch.matmul(grad_output, weight.to(grad_output.dtype)) if ctx.needs_input_grad[0] else None
            return grad_x, None, None

    return FrozenLinear


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


def model_summary(model) -> dict:
    """Trainable and total parameter counts (4-bit weights counted as stored elements x 2)."""
    import torch

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() * (2 if p.dtype == torch.uint8 else 1) for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total}
