"""What a run ran on: library versions, CPU / GPU model, thread count. Written beside a stage's metrics.

Training numbers depend on all of these (a different CPU model or thread count changes the order of float
reductions), so a result without them cannot be compared with another.
"""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

LIBRARIES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "tokenizers", "numpy", "scikit-learn")


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def environment() -> dict:
    """Versions, hardware and threads of this process (deterministic on one machine: no timestamps)."""
    import torch

    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"versions": versions, "cpu": cpu_model(), "cpu_count": os.cpu_count(), "gpu": gpu,
            "torch_threads": torch.get_num_threads()}
