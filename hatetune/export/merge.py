"""A LoRA adapter merged into an unquantized copy of its base model.

Merging happens in float32 on the full-precision base, never on 4-bit weights (the sum would be re-quantized).
A LoRA on `lm_head` over tied embeddings (seed A's preset on a base like SmolLM2, `tie_word_embeddings: true`)
needs care: PEFT's `merge_and_unload` would add the head's delta to the one matrix the head shares with the input
embedding, silently changing every input token's embedding. The head is untied first and re-tied only if it is
still equal to the embedding. Such an adapter cannot be a GGUF LoRA (llama.cpp rejects it) nor a vLLM
`--lora-modules` adapter: the merged model is the way to serve it.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import HatetuneError
from ..models import contiguous_head_input, model_source


def adapter_targets(adapter_dir: str | Path) -> list[str]:
    """The module names an adapter trains: LoRA targets + fully saved modules (adapter_config.json)."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    return sorted(set(targets) | set(config.get("modules_to_save") or []))


def trains_output_head(adapter_dir: str | Path) -> bool:
    return "lm_head" in adapter_targets(adapter_dir)


def load_unquantized(model_cfg, base_dir: str | Path):
    """The base model of a base_model stage output in float32, refusing a quantized checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM

    name, revision = model_source(base_dir)
    model = AutoModelForCausalLM.from_pretrained(name, revision=revision, dtype=torch.float32, use_safetensors=True,
                                                 trust_remote_code=bool(model_cfg.trust_remote_code))
    if getattr(model.config, "quantization_config", None) is not None:
        raise HatetuneError("the base model is a quantized checkpoint: merging needs the unquantized weights",
                            file=str(base_dir))
    contiguous_head_input(model)  # as models.load_model does: ~10x faster label scoring on CPU
    return model


def merge_adapter(model_cfg, base_dir: str | Path, adapter_dir: str | Path | None):
    """Base (float32) + adapter, merged; in eval mode. `adapter_dir` None: the base model alone."""
    import torch
    from peft import PeftModel

    model = load_unquantized(model_cfg, base_dir)
    if adapter_dir is None:
        return model.eval()
    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise HatetuneError("no LoRA adapter here (adapter_config.json missing): run the train stage",
                            file=str(adapter_dir))
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head.weight is emb.weight:  # untie, or the head's LoRA delta would land in the input embedding too
        head.weight = torch.nn.Parameter(emb.weight.detach().clone())
        model.config.tie_word_embeddings = False
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    emb, head = merged.get_input_embeddings(), merged.get_output_embeddings()
    if torch.equal(head.weight, emb.weight):  # the adapter left the head alone: tie again (smaller files)
        head.weight = emb.weight
        merged.config.tie_word_embeddings = True
    return merged.eval()


def save_merged(model, tokenizer, out_dir: str | Path, dtype: str = "bfloat16") -> Path:
    """The merged model as a Hugging Face folder (safetensors, tokenizer): what llama.cpp's
    convert_hf_to_gguf.py reads for a Hub base, and what vLLM serves without LoRA."""
    import copy

    from ..models import torch_dtype

    out_dir = Path(out_dir)
    copy.deepcopy(model).to(torch_dtype(dtype)).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
