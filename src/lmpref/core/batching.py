"""Batching token sequences: left padding with an attention mask, shared by sampling, the reward
model, SFT and evaluation."""

from __future__ import annotations

import torch


def pad_left(seqs: list[list[int]], pad_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to one length: (B, Q) ids and (B, Q) attention mask."""
    length = length or max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"sequence of {len(s)} tokens does not fit in {length}")
        if s:
            ids[i, length - len(s) :] = torch.tensor(s)
            mask[i, length - len(s) :] = 1
    return ids, mask
