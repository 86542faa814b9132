"""base_model: make the base model of `model` loadable offline, once.

- `model.path` set: a pointer to that local Hugging Face folder.
- an offline mirror (download.mirror or $HATETUNE_MIRROR) holding `<model.mirror_name>/<model.gguf_file>`:
  the GGUF dequantised into a Hugging Face folder (bf16 safetensors, tokenizer, chat template).
- otherwise the Hub: `model.hub_id` at `model.revision` is fetched into the Hub cache (never into the DVC
  cache) and a pointer records the resolved commit. Gated models read HF_TOKEN from the environment.

Output: models/base/<model.name>/ (a HF folder, or hatetune_base.json for a Hub / local model).
"""
from __future__ import annotations

import sys

from hatetune import config, models
from hatetune.errors import exit_on_error


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, argv)
    out_dir = models.base_model_dir(cfg)
    info = models.prepare_base_model(cfg, out_dir)
    print(f"base model {cfg.model.name} ({info['source']}) -> {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
