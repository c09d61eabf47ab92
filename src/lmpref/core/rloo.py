"""RLOO: REINFORCE with a leave-one-out baseline, on reward − β·KL(π‖ρ), with no value head.

K responses are sampled for each query and scored by the reward model; each sequence's reward is
the score minus β·Σ_t(log π − log ρ) over its response tokens (the KL penalty of PPO's shaped
rewards, summed per sequence: `kl_shaped_rewards(...).sum(1)`). The baseline of response i is the
mean reward of the other K − 1 responses to the same query, so its advantage is
r_i − (Σ_j r_j − r_i)/(K − 1) (Kool et al. 2019, "Buy 4 REINFORCE samples, get a baseline for
free!"; Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
from Human Feedback in LLMs", eq. 6). The loss is −mean(A_i · log π(y_i|x)), one gradient step per
batch of samples (on-policy: no ratio, no clipping). Sampling and scoring reuse PPO's rollout, so
responses, truncation, the penalty for invalid responses and the temperature are PPO's.

Shapes: B episodes (= N queries × K), R response length.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from lmpref.config import RLOOConfig, TaskConfig
from lmpref.core.ppo import rollout
from lmpref.core.sampling import cat_query_response, logprobs_of

# ---------------------------------------------------------------------------------------------
# Pure math


def rloo_advantages(rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Leave-one-out baselines and advantages of the K rewards of each query: (N, K) -> (N, K), (N, K)."""
    K = rewards.shape[1]
    baseline = (rewards.sum(1, keepdim=True) - rewards) / (K - 1)
    return rewards - baseline, baseline


def sequence_rewards(scores, logprobs, ref_logprobs, kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """score − β·Σ_t(log π − log ρ) per sequence, and the KL Σ_t(log π − log ρ): (B,), (B, R), (B, R) -> (B,), (B,)."""
    kl = (logprobs - ref_logprobs).sum(1)
    return scores - kl_coef * kl, kl


def rloo_loss(logprobs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """REINFORCE: −mean(A · log π(y|x)) with the sequence log-probs (B,) and fixed advantages (B,)."""
    return -(advantages.detach() * logprobs).mean()


# ---------------------------------------------------------------------------------------------
# The loop


def train_rloo(
    policy,
    ref,
    reward_fn: Callable,
    tokenizer,
    next_queries: Callable[[int, int], list],
    cfg: RLOOConfig,
    task: TaskConfig,
    *,
    seed: int,
    device,
    state: dict | None = None,
    optimizer=None,
    log: Callable[[dict], None] | None = None,
    checkpoint: Callable[[int, dict, object], None] | None = None,
    should_stop: Callable[[], str | None] | None = None,
    forward_batch: int = 32,
) -> dict:
    """RLOO updates until `cfg.total_episodes`, one process. `next_queries(update, n)` gives the
    update's n = batch_size / k queries (deterministic, so a resumed run sees the same stream); each
    is sampled k times. `state` ({"update"}) and `optimizer` come from a checkpoint when resuming;
    `should_stop()` is read between updates (the Andon cord): a reason halts after a checkpoint."""
    num_updates = cfg.total_episodes // cfg.batch_size
    state = dict(state or {"update": 0})
    state.pop("stopped", None)
    params = [p for p in policy.parameters() if p.requires_grad]
    if optimizer is None:
        optimizer = torch.optim.Adam(params, lr=cfg.lr, eps=1e-5)
    K = cfg.k
    bar = tqdm(total=num_updates, initial=state["update"], desc="RLOO", unit="update")
    while state["update"] < num_updates:
        if should_stop and (reason := should_stop()):
            state["stopped"] = reason
            break
        update = state["update"] + 1
        lr = cfg.lr * (1 - (update - 1) / num_updates) if cfg.anneal_lr else cfg.lr
        for g in optimizer.param_groups:
            g["lr"] = lr
        torch.manual_seed(seed * 1_000_003 + update)  # sampling noise is a function of (seed, update)
        queries = next_queries(update, cfg.batch_size // K)
        ro = rollout(
            policy,
            ref,
            reward_fn,
            tokenizer,
            [q for q in queries for _ in range(K)],  # each query's K samples side by side
            task,
            forward_batch=forward_batch,
            device=device,
        )
        rewards, kl = sequence_rewards(ro.scores, ro.logprobs, ro.ref_logprobs, cfg.kl_coef)  # (B,)
        advantages, baseline = rloo_advantages(rewards.view(-1, K))
        advantages = advantages.reshape(-1)
        ids, mask = cat_query_response(ro.query_ids, ro.query_mask, ro.responses)
        B, R = ro.responses.shape
        policy.train()
        optimizer.zero_grad()
        loss_sum = 0.0
        for s in range(0, B, forward_batch):
            sl = slice(s, s + forward_batch)
            logits, _ = policy(ids[sl], mask[sl], R, task.temperature, with_values=False)
            lp = logprobs_of(logits, ro.responses[sl]).sum(1)  # (b,)
            loss = rloo_loss(lp, advantages[sl]) * (lp.shape[0] / B)
            loss.backward()
            loss_sum += loss.item()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        policy.eval()
        stats = {
            "step": update,
            "episodes": update * cfg.batch_size,
            "objective/scores": ro.scores.mean().item(),
            "objective/kl": kl.mean().item(),
            "objective/score_total": rewards.mean().item(),
            "objective/kl_coef": cfg.kl_coef,
            "objective/valid_fraction": ro.valid.float().mean().item(),
            # the score the loss is fed, read back from the KL-penalised rewards (the direction guard's)
            "rloo/scores_seen": (rewards + cfg.kl_coef * kl).mean().item(),
            "rloo/loss": loss_sum,
            "rloo/advantage_abs": advantages.abs().mean().item(),
            "rloo/baseline": baseline.mean().item(),
            "rloo/lr": lr,
        }
        state["update"] = update
        if log:
            log(stats)
        bar.update()
        bar.set_postfix(score=f"{stats['objective/scores']:.3f}", kl=f"{stats['objective/kl']:.2f}")
        if checkpoint and (update % cfg.checkpoint_every == 0 or update == num_updates):
            checkpoint(update, state, optimizer)
    bar.close()
    if state.get("stopped") and checkpoint:
        checkpoint(state["update"], state, optimizer)
    return state
