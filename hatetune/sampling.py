"""Sampled decoding for `hatetune.inference`: temperature, nucleus (top_p) filtering, and per-prompt generators.

Each prompt draws from its own `torch.Generator` seeded with (seed, the prompt's index in the input), so a
sampled reply is the same whatever batch it lands in, whatever the batch size and the length sorting.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Sampling:
    """Nucleus sampling: logits / temperature, then the smallest set of most likely tokens whose probability
    reaches top_p; prompt i draws from a generator seeded with (seed, i)."""

    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def generators(self, n: int) -> list:
        """One generator per prompt, seeded from (seed, index) through numpy's SeedSequence (torch's CPU generator
        keeps only 32 bits of a seed, so packing both numbers into one integer would collide)."""
        import numpy as np
        import torch

        return [torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, i]).generate_state(1)[0]))
                for i in range(n)]


def top_p_filter(probs, top_p: float):
    """`probs` ([batch, vocab]) with every token outside the nucleus zeroed and the rest renormalised: a token is
    kept when the tokens more likely than it hold less than `top_p` (so the most likely token always is)."""
    import torch

    sorted_probs, order = probs.sort(dim=-1, descending=True)
    before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the tokens ranked above each token
    sorted_probs = sorted_probs.masked_fill(before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return kept / kept.sum(-1, keepdim=True)


def sampled_picker(sampling: Sampling, generators: Sequence):
    """next-token ids of a batch: drawn from each row's nucleus with that row's generator (on the CPU)."""
    import torch

    def pick(logits):
        probs = top_p_filter(torch.softmax(logits.float().cpu() / sampling.temperature, dim=-1), sampling.top_p)
        drawn = [torch.multinomial(probs[b], 1, generator=generators[b]) for b in range(probs.shape[0])]
        return torch.cat(drawn).to(logits.device)

    return pick
