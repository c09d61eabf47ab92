"""Supervised fine-tuning on (query, reference summary) pairs: the paper's supervised baseline.

Ziegler et al. 2019 §4.2 compare their RL policies with "supervised" models (the pretrained model
fine-tuned on the datasets' reference summaries) and with "supervised + RL" (PPO started from
the supervised model, which is then also the reference model of the KL penalty). `train_sft`
makes the first; its output directory is a policy that `model.name` can point at for the second.

Shapes: B pairs, Q padded query length, R target length (longest target in the batch), V vocab.
"""

from __future__ import annotations

import math
import random

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmpref.config import SFTConfig
from lmpref.core.batching import pad_left


def sft_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per target token: logits (B, R, V), targets (B, R), mask (B, R)."""
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view_as(targets)  # (B, R)
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def target_ids(tokenizer, reference: str, response_length: int) -> list[int]:
    """The reference written as a response: " " + the reference on one line + "\\n", at most
    `response_length` tokens. The space: it continues "TL;DR:". The newline: under the task's
    truncation rule it is what ends a summary, so the model learns where to stop."""
    text = " " + " ".join(reference.split()) + "\n"
    return tokenizer.encode(text, add_special_tokens=False)[:response_length]


def batch_pairs(pairs: list[tuple[list[int], list[int]]], pad_id: int, query_length: int):
    """Left-padded queries + right-padded targets: ids (B, Q+R), mask (B, Q+R), targets (B, R),
    target mask (B, R)."""
    q_ids, q_mask = pad_left([q for q, _ in pairs], pad_id, query_length)  # (B, Q)
    R = max(len(t) for _, t in pairs)
    t_ids = torch.full((len(pairs), R), pad_id, dtype=torch.long)
    t_mask = torch.zeros((len(pairs), R), dtype=torch.long)
    for i, (_, t) in enumerate(pairs):
        t_ids[i, : len(t)] = torch.tensor(t)
        t_mask[i, : len(t)] = 1
    return torch.cat([q_ids, t_ids], 1), torch.cat([q_mask, t_mask], 1), t_ids, t_mask


def _batch_loss(policy, pairs, pad_id: int, query_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(policy.parameters()).device
    ids, mask, targets, t_mask = (x.to(device) for x in batch_pairs(pairs, pad_id, query_length))
    logits, _ = policy(ids, mask, targets.shape[1], with_values=False)  # (B, R, V)
    return sft_loss(logits, targets, t_mask), t_mask.sum()


@torch.no_grad()
def heldout_loss(policy, pairs, pad_id: int, query_length: int, batch_size: int = 8) -> float:
    """Mean NLL per target token over all `pairs` (token-weighted, so batch size does not matter)."""
    policy.eval()
    total, tokens = 0.0, 0
    for s in range(0, len(pairs), batch_size):
        loss, n = _batch_loss(policy, pairs[s : s + batch_size], pad_id, query_length)
        total += loss.item() * n.item()
        tokens += n.item()
    return total / tokens if tokens else float("nan")


def train_sft(policy, train, heldout, cfg: SFTConfig, *, pad_id: int, query_length: int, seed: int, log=None) -> dict:
    """Fine-tune `policy` (a PolicyWithValue) on (query ids, target ids) pairs; returns metrics.

    One visible loop: shuffle, batch, loss, step, for `cfg.epochs`; Adam with the learning rate
    decayed linearly to 0. Held-out loss is measured before and after."""
    torch.manual_seed(seed)
    if not train:
        raise ValueError("no training pairs for supervised fine-tuning")
    metrics = {"n_train": len(train), "n_heldout": len(heldout)}
    metrics["heldout_loss_before"] = heldout_loss(policy, heldout, pad_id, query_length, cfg.batch_size)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg.lr)
    steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    rng = random.Random(f"sft-shuffle-{seed}")
    step = 0
    bar = tqdm(total=steps, desc="supervised fine-tuning", unit="step")
    for epoch in range(cfg.epochs):
        policy.train()
        order = list(range(len(train)))
        rng.shuffle(order)
        for s in range(0, len(order), cfg.batch_size):
            loss, _ = _batch_loss(policy, [train[i] for i in order[s : s + cfg.batch_size]], pad_id, query_length)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if log:
                log({"step": step, "epoch": epoch, "sft/loss": loss.item(), "sft/lr": sched.get_last_lr()[0]})
    bar.close()
    metrics["heldout_loss_after"] = heldout_loss(policy, heldout, pad_id, query_length, cfg.batch_size)
    return metrics
