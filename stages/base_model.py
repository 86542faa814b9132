"""base_model: make the base model that the `sources` stage resolved loadable offline, once.

- a mirror GGUF (`<mirror>/<model.mirror_name>/<model.gguf_file>`): dequantised into a Hugging Face folder
  (bf16 safetensors, tokenizer, chat template), after checking its sha256 against the resolved one;
- a Hub model (`model.hub_id` at the resolved commit): fetched into the Hub cache (never into the DVC cache) and
  a pointer written; gated models read HF_TOKEN from the environment;
- a local folder (`model.path`): a pointer.

Reads models/base/<model>.source.json (resolving it here when run by hand without it).
Output: models/base/<model>/ (a HF folder or a pointer), each with hatetune_source.json.
"""
from __future__ import annotations

import json
import sys

from hatetune import config, model_sources, paths, sources
from hatetune.errors import exit_on_error


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "base_model", argv)
    mirror = sources.mirror_root(cfg.download.mirror)
    source_file = paths.base_source_file(cfg.model.name)
    source = (json.loads(source_file.read_text(encoding="utf-8")) if source_file.is_file()
              else model_sources.resolve(cfg.model, mirror))
    out_dir = paths.base_model_dir(cfg.model.name)
    model_sources.materialise(source, out_dir, mirror, trust_remote_code=model_sources.trust_remote_code(cfg.model))
    print(f"base model {cfg.model.name}: {model_sources.describe(source)} -> {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
