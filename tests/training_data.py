"""Learnable toy rows for training tests: the label is given away by the first word of the post."""
from __future__ import annotations

import json
import random
from pathlib import Path

INSTRUCTION = "You are a helpful Assistant. Your task is to classify the social media post as hate or not hate. Post:"
SYSTEM = "Strictly respond only with the label: 'hate' or 'not hate'."
WORDS = "people they them those we our neighbourhood love respect women men immigrants muslims jews".split()


def make_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        hate = i % 2 == 0
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 20)))
        rows.append({"instruction": INSTRUCTION, "input": f"{'hate' if hate else 'love'} {words}",
                     "output": "hate" if hate else "not hate", "system": SYSTEM, "id": str(i)})
    return rows


def write_processed(folder: Path, n_train: int = 32, n_dev: int = 8) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("dev", n_dev, 1), ("test", n_dev, 2)):
        with open(folder / f"{split}.jsonl", "w") as f:
            for row in make_rows(n, seed):
                f.write(json.dumps(row) + "\n")
    return folder
