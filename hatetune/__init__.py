"""hatetune: reproducible QLoRA fine-tuning, evaluation and serving for hate-speech models."""

__version__ = "0.1.0"
