"""What tests share besides fixtures (importable by name: `conftest` is ambiguous with tests/integration/)."""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mirror_dir() -> Path | None:
    """The real offline mirror (../shared/mirror beside the repo, or $HATETUNE_MIRROR), if present."""
    candidates = [os.environ.get("HATETUNE_MIRROR"), ROOT.parent / "shared" / "mirror"]
    for c in candidates:
        if c and Path(c).is_dir():
            return Path(c).resolve()
    return None
