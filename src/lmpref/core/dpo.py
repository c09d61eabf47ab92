"""Direct preference optimisation on whole best-of-K labels, with no reward model.

The implicit reward of a response is r(x, y) = β·(log π(y|x) − log ρ(y|x)) (Rafailov et al. 2023,
"Direct Preference Optimization", eq. 5). A best-of-K label is the first choice of a Plackett–Luce
ranking of the K responses, so its likelihood is softmax(r)[best]: the reward model's own loss
(paper eq. 1, `lmpref.core.reward.best_of_k_loss`) with r in place of the reward model's scores.
At K = 2 this is DPO's −log σ(r_w − r_l) (Rafailov et al. 2023, eq. 7; appendix A.3 derives the
Plackett–Luce form). Responses a label lacks (fewer than K shown: invalid ones are never shown) are
masked as the reward loss masks them; ties are skipped when the labels are read (`read_labels`).

log ρ(y|x) of every labeled response is computed once, before training (`sequence_logprobs` with
the frozen reference), and kept with the run. At the small scales only the policy's top blocks
train, so its lower F blocks compute the same function as ρ's (`lmpref.core.trunk.shared_depth`):
`TrunkCache` keeps each labeled pair's hidden states after block F - 1, computed once, and every
training step and held-out measurement runs only the blocks above F (tests/test_dpo.py checks the
cached path against the full forward). Log-probs are of the logits divided by the task's
sampling temperature, as PPO's are: the policy being trained is the one that is sampled.

Shapes: B labels, K responses per label (padded, with a mask), N = flattened (query, response) pairs.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmpref.config import DPOConfig
from lmpref.core.models import lower_hidden
from lmpref.core.reward import Choice
from lmpref.core.sft import batch_pairs

# ---------------------------------------------------------------------------------------------
# Pure math


def kway_dpo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    best: torch.Tensor,
    beta: float,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over labels of −log softmax(β·(log π − log ρ))[best] over each label's responses.
    policy_logps, ref_logps (B, K) sequence log-probs; best (B,); mask (B, K) True where a response
    exists. Returns the loss and the implicit rewards (B, K) (−inf where masked)."""
    rewards = beta * (policy_logps - ref_logps)
    if mask is not None:
        rewards = rewards.masked_fill(~mask, float("-inf"))
    log_p = rewards - torch.logsumexp(rewards, dim=-1, keepdim=True)  # (B, K)
    return -log_p.gather(1, best.unsqueeze(1)).squeeze(1).mean(), rewards


def implicit_accuracy(rewards: torch.Tensor, best: torch.Tensor) -> float:
    """Share of labels whose best response has the highest implicit reward. (B, K), (B,) -> float."""
    return (rewards.argmax(-1) == best).float().mean().item()


# ---------------------------------------------------------------------------------------------
# Sequence log-probs


def flat_pairs(labels: list[Choice]) -> tuple[list[tuple[list[int], list[int]]], list[tuple[int, int]]]:
    """Every (query ids, response ids) of the labels, with its (label, response) index."""
    pairs, index = [], []
    for b, c in enumerate(labels):
        for k, r in enumerate(c.response_ids):
            pairs.append((c.query_ids, r))
            index.append((b, k))
    return pairs, index


def to_grid(flat: torch.Tensor, index: list[tuple[int, int]], n_labels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat values (N,) -> (B, K) with the (B, K) mask of responses that exist (0 where absent)."""
    kmax = max(k for _, k in index) + 1
    b_idx = torch.tensor([b for b, _ in index], device=flat.device)
    k_idx = torch.tensor([k for _, k in index], device=flat.device)
    grid = torch.zeros(n_labels, kmax, device=flat.device, dtype=flat.dtype).index_put((b_idx, k_idx), flat)
    present = torch.zeros(n_labels, kmax, dtype=torch.bool, device=flat.device)
    present[b_idx, k_idx] = True
    return grid, present


class TrunkCache:
    """The hidden states after the shared frozen blocks 0..depth-1 of each (query ids, response ids)
    pair, real tokens only ((len q + len r, D) each), computed once. Padding positions are left at
    zero when a batch is laid out: attention masks them, so no real position reads them."""

    def __init__(self, depth: int):
        self.depth = depth
        self.rows: dict[tuple[tuple[int, ...], tuple[int, ...]], torch.Tensor] = {}

    @staticmethod
    def nbytes(pairs, hidden_size: int) -> int:
        """What caching `pairs` takes in fp32."""
        unique = {(tuple(q), tuple(r)) for q, r in pairs}
        return 4 * hidden_size * sum(len(q) + len(r) for q, r in unique)

    @torch.no_grad()
    def fill(self, lm, pairs, pad_id: int, batch_size: int = 32) -> None:
        """Run the lower blocks of `lm` once over every pair not cached yet."""
        todo = list(dict.fromkeys((tuple(q), tuple(r)) for q, r in pairs if (tuple(q), tuple(r)) not in self.rows))
        device = next(lm.parameters()).device
        for s in tqdm(range(0, len(todo), batch_size), desc="shared trunk", unit="batch", disable=not todo):
            chunk = todo[s : s + batch_size]
            ids, mask, _, _ = batch_pairs([(list(q), list(r)) for q, r in chunk], pad_id, None)
            h = lower_hidden(lm, ids.to(device), mask.to(device), self.depth)  # (B, Q+R, D)
            Q = ids.shape[1] - max(len(r) for _, r in chunk)
            for i, (q, r) in enumerate(chunk):
                self.rows[(q, r)] = h[i, Q - len(q) : Q + len(r)].clone()

    def batch(self, pairs, T: int, R: int) -> torch.Tensor:
        """(B, T, D) hidden states laid out as `batch_pairs` lays out the ids (queries left-padded to
        T - R, responses right-padded to R)."""
        first = self.rows[(tuple(pairs[0][0]), tuple(pairs[0][1]))]
        out = first.new_zeros(len(pairs), T, first.shape[-1])
        Q = T - R
        for i, (q, r) in enumerate(pairs):
            out[i, Q - len(q) : Q + len(r)] = self.rows[(tuple(q), tuple(r))]
        return out


def sequence_logprobs(model, pairs, pad_id: int, temperature: float, trunk: TrunkCache | None = None) -> torch.Tensor:
    """Σ_t log π(y_t | x, y_<t) of each (query ids, response ids) pair, with gradients when the model
    has them: (N,). Queries left-padded, responses right-padded (the padding after a response is
    masked and, the attention being causal, changes nothing before it). With `trunk`, the blocks
    below `trunk.depth` are not run: their output is read from the cache."""
    device = next(model.parameters()).device
    ids, mask, targets, t_mask = (x.to(device) for x in batch_pairs(pairs, pad_id, None))
    R = max(targets.shape[1], 1)
    if targets.shape[1] == 0:  # only empty responses: log-prob 0
        return torch.zeros(len(pairs), device=device)
    extra = {}
    if trunk is not None and trunk.depth > 0:
        extra = {"hidden": trunk.batch(pairs, ids.shape[1], targets.shape[1]).to(device), "depth": trunk.depth}
    logits, _ = model(ids, mask, R, temperature, with_values=False, **extra)  # (N, R, V)
    token_lp = torch.gather(F.log_softmax(logits, -1), 2, targets.unsqueeze(-1)).squeeze(-1)  # (N, R)
    return (token_lp * t_mask).sum(1)


@torch.no_grad()
def reference_logprobs(
    ref, labels: list[Choice], pad_id: int, temperature: float, batch_size: int = 32, trunk: TrunkCache | None = None
) -> list:
    """log ρ(y|x) of every response of every label, computed once: a list per label (K floats)."""
    pairs, index = flat_pairs(labels)
    flat = []
    for s in tqdm(range(0, len(pairs), batch_size), desc="reference log-probs", unit="batch"):
        flat += sequence_logprobs(ref, pairs[s : s + batch_size], pad_id, temperature, trunk).float().cpu().tolist()
    out: list[list[float]] = [[] for _ in labels]
    for (b, _), v in zip(index, flat):
        out[b].append(v)
    return out


def label_batch_loss(
    policy,
    labels: list[Choice],
    ref_lp: list[list[float]],
    beta: float,
    pad_id: int,
    temperature: float,
    trunk: TrunkCache | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The K-way DPO loss of a batch of labels (with gradients), its implicit rewards (B, K) and the bests (B,)."""
    pairs, index = flat_pairs(labels)
    pol, present = to_grid(sequence_logprobs(policy, pairs, pad_id, temperature, trunk).float(), index, len(labels))
    device = pol.device
    ref = to_grid(torch.tensor([v for lp in ref_lp for v in lp], device=device), index, len(labels))[0]
    best = torch.tensor([c.best for c in labels], device=device)
    loss, rewards = kway_dpo_loss(pol, ref, best, beta, present)
    return loss, rewards, best


@torch.no_grad()
def heldout_accuracy(
    policy, labels, ref_lp, beta: float, pad_id: int, temperature: float, batch_size: int = 8, trunk=None
):
    """Share of held-out labels whose best response has the highest implicit reward (nan without any)."""
    if not labels:
        return float("nan")
    policy.eval()
    hits = 0.0
    for s in range(0, len(labels), batch_size):
        _, rewards, best = label_batch_loss(
            policy, labels[s : s + batch_size], ref_lp[s : s + batch_size], beta, pad_id, temperature, trunk
        )
        hits += (rewards.argmax(-1) == best).sum().item()
    return hits / len(labels)


# ---------------------------------------------------------------------------------------------
# The loop


def train_dpo(
    policy,
    train: list[Choice],
    train_ref: list[list[float]],
    heldout: list[Choice],
    heldout_ref: list[list[float]],
    cfg: DPOConfig,
    *,
    pad_id: int,
    temperature: float,
    seed: int,
    state: dict | None = None,
    optimizer=None,
    log: Callable[[dict], None] | None = None,
    checkpoint: Callable[[int, dict, object], None] | None = None,
    should_stop: Callable[[], str | None] | None = None,
    trunk: TrunkCache | None = None,
) -> dict:
    """K-way DPO on `train` (with its cached reference log-probs) for `cfg.epochs`: shuffle, batch,
    loss, step; Adam with the learning rate decayed linearly to 0. Each epoch's order is a function
    of (seed, epoch), so a run resumed from `state` ({"step"}) and its `optimizer` sees the same
    batches. `should_stop()` is read between steps (the Andon cord): a reason halts the run after a
    checkpoint. Held-out implicit-reward accuracy is measured at the start, at every checkpoint
    and at the end (`dpo/heldout_accuracy`). With `trunk` (the lower blocks' output of every pair in
    `train` and `heldout`), only the blocks above `trunk.depth` run. Returns the state, with the accuracies."""
    if not train:
        raise ValueError("no labels to train DPO on")
    per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    state = dict(state or {"step": 0})
    state.pop("stopped", None)
    params = [p for p in policy.parameters() if p.requires_grad]
    if optimizer is None:
        optimizer = torch.optim.Adam(params, lr=cfg.lr)

    def accuracy() -> float:
        return heldout_accuracy(policy, heldout, heldout_ref, cfg.beta, pad_id, temperature, trunk=trunk)

    if "heldout_accuracy_before" not in state:
        state["heldout_accuracy_before"] = accuracy()
    bar = tqdm(total=total, initial=state["step"], desc="DPO", unit="step")
    while state["step"] < total:
        if should_stop and (reason := should_stop()):
            state["stopped"] = reason
            break
        step = state["step"] + 1
        epoch, s = divmod(step - 1, per_epoch)
        order = list(range(len(train)))
        random.Random(f"dpo-shuffle-{seed}-{epoch}").shuffle(order)
        idx = order[s * cfg.batch_size : (s + 1) * cfg.batch_size]
        lr = cfg.lr * (1 - (step - 1) / total)
        for g in optimizer.param_groups:
            g["lr"] = lr
        policy.train()
        loss, rewards, best = label_batch_loss(
            policy, [train[i] for i in idx], [train_ref[i] for i in idx], cfg.beta, pad_id, temperature, trunk
        )
        optimizer.zero_grad()
        loss.backward()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        policy.eval()
        with torch.no_grad():
            rows = torch.arange(len(idx), device=rewards.device)
            chosen = rewards[rows, best]
            others = rewards.masked_fill(torch.nn.functional.one_hot(best, rewards.shape[1]).bool(), float("-inf"))
            margin = (chosen - others.max(-1).values).mean().item()
        state["step"] = step
        row = {
            "step": step,
            "epoch": epoch,
            "labels": step * cfg.batch_size,
            "dpo/loss": loss.item(),
            "dpo/accuracy": implicit_accuracy(rewards, best),
            "dpo/margin": margin,
            "dpo/chosen_reward": chosen.mean().item(),
            "dpo/lr": lr,
        }
        due = step % cfg.checkpoint_every == 0 or step == total
        if due:
            row["dpo/heldout_accuracy"] = state["heldout_accuracy"] = accuracy()
        if log:
            log(row)
        bar.update()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if checkpoint and due:
            checkpoint(step, state, optimizer)
    bar.close()
    if state.get("stopped") and checkpoint:
        checkpoint(state["step"], state, optimizer)
    if not state.get("stopped"):
        state["heldout_accuracy"] = state.get("heldout_accuracy", accuracy())
    return state
