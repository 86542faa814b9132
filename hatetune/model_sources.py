"""Where the base model's weights come from, resolved cheaply (the `sources` stage), then made loadable once
(the `base_model` stage).

Resolution, in this order:
- `model.path`: a local Hugging Face folder (identified by its file sizes);
- an offline mirror (download.mirror or $HATETUNE_MIRROR) with a `<model.mirror_name>/` entry: its
  `<model.gguf_file>`, identified by its sha256 (on the default model: the mirror's Q4_1 quantisation, dequantised
  once, which is not the same weights as the Hub's bf16); a mirror without that entry leaves the model to the Hub;
- otherwise the Hub: `model.hub_id` at `model.revision`, identified by the commit sha.
The `sources` stage writes the resolved source to models/base/<model>.source.json, which base_model depends
on: switching between the mirror and the Hub changes that file, so DVC reruns base_model and what follows.

base_model's output, models/base/<model>/, is either a full Hugging Face folder (converted from the GGUF: small
models only, it becomes a DVC-cached output) or a pointer file naming the Hub commit / local folder (weights
stay in the Hub cache, never in the DVC cache). Both carry `hatetune_source.json`, the resolved source.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Mapping, Optional

from .errors import HatetuneError
from .gguf_reading import fast_gguf_reading
from .io import atomic_path, sha256_file, write_json

SOURCE_FILE = "hatetune_source.json"
# What a Hub snapshot needs for loading: weights as safetensors only (never pickles), configs, tokenizer files.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.tiktoken"]
_COMMIT_SHA = re.compile(r"[0-9a-f]{40}")
_WARNED_REMOTE_CODE: set = set()  # models this process has warned about


def trust_remote_code(model_cfg) -> bool:
    """`model.trust_remote_code`, the one place every model loader reads it: when true, warn loudly, once per
    process (one stage; rank 0 of a multi-process run), naming the model and its pinned revision."""
    if not model_cfg.trust_remote_code:
        return False
    if model_cfg.name not in _WARNED_REMOTE_CODE and os.environ.get("RANK", "0") == "0":
        _WARNED_REMOTE_CODE.add(model_cfg.name)
        where = f"the local folder {model_cfg.path}" if model_cfg.get("path") else \
            f"{model_cfg.hub_id} at revision {model_cfg.revision}"
        print(f"WARNING: model.trust_remote_code=true: loading {model_cfg.name} ({where}) runs the Python code "
              "shipped with the model on this machine, with your permissions. Enable it only for a pinned revision "
              "whose code you have read.", file=sys.stderr)
    return True


# ------------------------------------------------------------------------------------------- resolution
def resolve(model_cfg, mirror: Optional[Path]) -> dict:
    """The base model source of `model_cfg`, identified exactly (cheap: no weights are copied)."""
    if model_cfg.get("path"):
        folder = Path(model_cfg.path).expanduser().resolve()
        if not (folder / "config.json").is_file():
            raise HatetuneError("not a Hugging Face model folder (no config.json)", file=str(folder),
                                field="model.path")
        sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.suffix in (".json", ".safetensors")}
        return {"kind": "local", "path": str(folder), "files": sizes}
    if mirror is not None and model_cfg.mirror_name and (mirror / model_cfg.mirror_name).is_dir():
        if not model_cfg.gguf_file:
            raise HatetuneError("an offline mirror model needs model.gguf_file", field="model.gguf_file")
        gguf = mirror / model_cfg.mirror_name / model_cfg.gguf_file
        if not gguf.is_file():
            raise HatetuneError("GGUF file not found in the offline mirror", file=str(gguf), field="model.gguf_file")
        return {"kind": "gguf", "file": f"{model_cfg.mirror_name}/{model_cfg.gguf_file}", "sha256": sha256_file(gguf),
                "copy_of": model_cfg.hub_id}
    return {"kind": "hub", "hub_id": model_cfg.hub_id, "revision": hub_commit(model_cfg.hub_id, model_cfg.revision),
            "requested_revision": model_cfg.revision}


def hub_commit(hub_id: str, revision: str) -> str:
    """The commit sha of `hub_id@revision`: the revision itself when it is one (no network), else asked."""
    if _COMMIT_SHA.fullmatch(revision):
        return revision
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(hub_id, revision=revision).sha
    except Exception as err:  # network, auth (gated models), unknown id: one clear line
        raise HatetuneError(f"cannot resolve {hub_id}@{revision} on the Hugging Face Hub ({type(err).__name__}); "
                            "pin model.revision to a commit sha, or set $HATETUNE_MIRROR", field="model.revision") \
            from None


def describe(source: Mapping[str, Any]) -> str:
    """One line naming the weights, for logs and the model card."""
    if source["kind"] == "gguf":
        return f"offline mirror GGUF {source['file']} (sha256 {source['sha256'][:12]}…, a copy of {source['copy_of']})"
    if source["kind"] == "hub":
        return f"{source['hub_id']} @ {source['revision']} (Hugging Face Hub)"
    return f"local folder {source['path']}"


# ---------------------------------------------------------------------------------------- the base model
def materialise(source: Mapping[str, Any], out_dir: str | Path, mirror: Optional[Path],
                trust_remote_code: bool = False) -> Path:
    """Make the resolved `source` loadable at `out_dir` (see the module docstring), atomically."""
    out_dir = Path(out_dir)
    if source["kind"] == "gguf":
        convert_gguf(source_gguf(source, mirror), out_dir, dict(source), trust_remote_code=trust_remote_code)
        return out_dir
    if source["kind"] == "hub":
        download_hub_snapshot(source["hub_id"], source["revision"])
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        write_json(tmp / SOURCE_FILE, dict(source))
    return out_dir


def source_gguf(source: Mapping[str, Any], mirror: Optional[Path]) -> Path:
    """The mirror GGUF file a resolved `gguf` source names, checked against the sha256 the sources stage saw."""
    if mirror is None:
        raise HatetuneError("the base model comes from the offline mirror but no mirror is set "
                            "(download.mirror or $HATETUNE_MIRROR): rerun `dvc repro`", field="download.mirror")
    gguf = mirror / source["file"]
    got = sha256_file(gguf) if gguf.is_file() else None
    if got != source["sha256"]:
        raise HatetuneError(f"the mirror's file changed since the sources stage ran (sha256 {got}, expected "
                            f"{source['sha256']}): rerun `dvc repro`", file=str(gguf))
    return gguf


def download_hub_snapshot(hub_id: str, revision: str) -> Path:
    """`hub_id@revision` into the Hub cache, safetensors only. Token: $HF_TOKEN, read by huggingface_hub itself
    and never written anywhere."""
    from huggingface_hub import snapshot_download

    try:
        path = Path(snapshot_download(hub_id, revision=revision, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # network, auth (gated models), unknown id: one clear line
        raise HatetuneError(f"cannot fetch {hub_id}@{revision} from the Hugging Face Hub "
                            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                            f"gated models need HF_TOKEN in the environment", field="model.hub_id") from None
    if not any(path.glob("*.safetensors")):
        raise HatetuneError(f"{hub_id}@{revision} has no safetensors weights (pickle checkpoints are refused)",
                            field="model.hub_id")
    return path


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, source: Optional[dict] = None,
                 trust_remote_code: bool = False) -> Path:
    """Dequantise a GGUF checkpoint once into a HF folder: bf16 safetensors, tokenizer, chat template.

    transformers refuses `save_pretrained` on a GGUF-loaded model, so the weights move into a freshly built
    model of the same config (without its `quantization_config`) which is then saved normally.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    with fast_gguf_reading():  # see gguf_reading: transformers' own reading of the header dominates otherwise
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
        if source is not None:
            write_json(tmp / SOURCE_FILE, source)
    return Path(out_dir)


# ------------------------------------------------------------------------------------------------ the judge
def resolve_judge(task_kind: str, adapter_dir: Optional[str], model_cfg) -> dict:
    """Which judge a generation task's replies get (the `sources` stage records it; the judge stage depends on it):
    the classifier adapter in `adapter_dir`, identified by the sha256 of its files, when it is one and was
    trained on this run's base model; otherwise the TF-IDF fallback, with the reason."""
    if task_kind != "generation":
        return {"kind": "not applicable", "reason": "a classification task: no replies to judge"}
    if not adapter_dir:
        return {"kind": "tfidf", "reason": "eval.judge.adapter_dir is null"}
    folder = Path(adapter_dir)
    config_file = folder / "adapter_config.json"
    if not config_file.is_file():
        return {"kind": "tfidf", "reason": f"no adapter in {folder} (a DynaHate judge: dvc exp run -S task=dynahate)"}
    import json

    base = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path") or ""
    ours = {model_cfg.name, model_cfg.hub_id, str(model_cfg.path or "")} - {""}
    if Path(base).name not in ours and base not in ours:
        return {"kind": "tfidf", "reason": f"the adapter in {folder} was trained on {base!r}, not on this run's "
                                          f"base model ({model_cfg.name})"}
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir())
             if p.is_file() and p.name in ("adapter_config.json", "adapter_model.safetensors")}
    return {"kind": "adapter", "path": str(folder), "files": files, "base_model": base}
