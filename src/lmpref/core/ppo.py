"""PPO on reward − β·KL(π‖ρ), as in the paper (§2.2) and openai/lm-human-preferences.

The pure functions (whiten, gae, kl_shaped_rewards, ppo_losses, AdaptiveKLController) take tensors and
numbers only. `train_policy` is the loop, read top to bottom: rollout, score, shape, GAE, epochs.

Shapes: B rollout batch, b minibatch, Q query length (padded), R response length, V vocab.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from lmpref.config import PPOConfig, TaskConfig
from lmpref.core.accel import (
    PhaseTimer,
    StaticSampler,
    autocast,
    backward,
    enabled,
    fit_micro_batch,
    from_main,
    gathered,
    mean_across,
    no_sync,
    rank_world,
    unwrap,
)
from lmpref.core.batching import pad_left
from lmpref.core.responses import apply_penalty, postprocess
from lmpref.core.sampling import cat_query_response, generate, logprobs_and_entropy, logprobs_of
from lmpref.core.trunk import Plan, reward_scores
from lmpref.core.trunk import plan as trunk_plan
from lmpref.core.trunk import sample as trunk_sample

# ---------------------------------------------------------------------------------------------
# Pure math


def whiten(x: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Zero-mean (optionally), unit-variance over the whole tensor; biased variance as TF's moments."""
    mean, var = x.mean(), x.var(unbiased=False)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the R response tokens; the episode ends after the last
    token (bootstrap value 0). rewards, values (B, R) -> advantages, returns (B, R)."""
    R = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(R)):
        next_value = values[:, t + 1] if t < R - 1 else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages[:, t] = lastgaelam
    return advantages, advantages + values


def kl_shaped_rewards(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, scores: torch.Tensor, kl_coef: float):
    """Per-token reward −β·(log π − log ρ), with the reward-model score added on the last token.
    (B, R), (B, R), (B,) -> rewards (B, R), kl (B, R)."""
    kl = logprobs - ref_logprobs
    rewards = -kl_coef * kl
    rewards[:, -1] += scores
    return rewards, kl


def ppo_losses(
    new_logprobs, old_logprobs, advantages, vpred, old_values, returns, cliprange: float, cliprange_value: float
):
    """Clipped policy loss and clipped value loss (means over all tokens) and diagnostics."""
    vpred_clipped = old_values + torch.clamp(vpred - old_values, -cliprange_value, cliprange_value)
    vf_losses = torch.max((vpred - returns) ** 2, (vpred_clipped - returns) ** 2)
    vf_loss = 0.5 * vf_losses.mean()
    log_ratio = new_logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    pg_losses = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange))
    pg_loss = pg_losses.mean()
    with torch.no_grad():
        stats = {
            "ppo/policy/clipfrac": (pg_losses > -advantages * ratio).float().mean().item(),
            "ppo/policy/approxkl": 0.5 * (log_ratio**2).mean().item(),
            "ppo/val/clipfrac": (vf_losses > (vpred - returns) ** 2).float().mean().item(),
            "ppo/val/vpred": vpred.mean().item(),
        }
    return pg_loss, vf_loss, stats


class AdaptiveKLController:
    """β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon) (Ziegler et al. 2019, eq. 2)."""

    def __init__(self, init_kl_coef: float, target: float | None, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if self.target is None:
            return
        error = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
        self.value *= 1 + error * n_steps / self.horizon


class AdamTF(torch.optim.Optimizer):
    """Adam with TensorFlow's epsilon placement: lr·√(1−β2ᵗ)/(1−β1ᵗ) · m / (√v + ε), i.e. ε is not
    bias-corrected (the original's optimizer; lm-human-preference-details found it matters)."""

    def __init__(self, params, lr=1e-5, betas=(0.9, 0.999), eps=1e-5):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"], st["m"], st["v"] = 0, torch.zeros_like(p), torch.zeros_like(p)
                st["step"] += 1
                st["m"].mul_(b1).add_(p.grad, alpha=1 - b1)
                st["v"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                lr_t = group["lr"] * math.sqrt(1 - b2 ** st["step"]) / (1 - b1 ** st["step"])
                p.addcdiv_(st["m"], st["v"].sqrt().add_(group["eps"]), value=-lr_t)


def make_optimizer(params, cfg: PPOConfig):
    """Adam (TF epsilon placement if asked); torch's fused kernel where `cfg.fused_adam` says so (same update)."""
    params = list(params)
    if cfg.adam_tf_eps:
        return AdamTF(params, lr=cfg.lr, eps=cfg.adam_eps)
    fused = enabled(cfg.fused_adam, params[0].device) or None  # None: torch's default (for-each)
    return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, fused=fused)


# ---------------------------------------------------------------------------------------------
# Rollout and the loop


@dataclass
class Rollout:
    query_ids: torch.Tensor  # (B, Q)
    query_mask: torch.Tensor  # (B, Q)
    responses: torch.Tensor  # (B, R)
    logprobs: torch.Tensor  # (B, R)
    ref_logprobs: torch.Tensor  # (B, R)
    values: torch.Tensor  # (B, R)
    scores: torch.Tensor  # (B,) reward-model score (penalty where invalid)
    valid: torch.Tensor  # (B,)
    lengths: torch.Tensor  # (B,) response length after truncation
    hidden: torch.Tensor | None = None  # (B, T, D) after block depth-1, shared by the PPO epochs (lmpref.core.trunk)
    depth: int = 0


@torch.no_grad()
def rollout(
    policy,
    ref,
    reward_fn,
    tokenizer,
    queries,
    task: TaskConfig,
    *,
    forward_batch: int,
    device,
    sampler: StaticSampler | None = None,
    timer: PhaseTimer | None = None,
    plan: Plan | None = None,
) -> Rollout:
    """Sample responses from the policy and score them: log-probs under π and ρ, values, rewards.
    With a `sampler` (accel.py) the policy's log-probs and values come from the sampling pass itself
    instead of a second forward; so they do with a `plan` (lmpref.core.trunk), which also keeps the hidden
    states at the shared depths so ρ, the reward model and the PPO epochs run only their own upper
    blocks. `timer` splits the time into generation, log-probs and reward."""
    timer = timer or PhaseTimer(device)
    qids, qmask = pad_left([q.ids for q in queries], tokenizer.pad_token_id, task.query_length)
    qids, qmask = qids.to(device), qmask.to(device)
    Q, R, T = qids.shape[1], task.response_length, task.temperature
    chunks = [slice(s, s + forward_batch) for s in range(0, len(queries), forward_batch)]
    lp, rlp, vals, responses, hidden = [], [], [], [], []
    with timer("generation"):
        for sl in chunks:
            if plan is not None:
                s = trunk_sample(
                    policy.lm,
                    qids[sl],
                    qmask[sl],
                    response_length=R,
                    temperature=T,
                    depths=plan.depths,
                    value_head=policy.value_head,
                )
                responses.append(s.responses), lp.append(s.logprobs), vals.append(s.values), hidden.append(s.hidden)
            elif sampler is None:
                responses.append(
                    generate(
                        policy.lm, qids[sl], qmask[sl], response_length=R, temperature=T, pad_id=tokenizer.pad_token_id
                    )
                )
            else:
                r, logprobs, values = sampler(policy, qids[sl], qmask[sl], response_length=R, temperature=T)
                responses.append(r), lp.append(logprobs), vals.append(values)
        responses = torch.cat(responses)  # (B, R)
    ids, mask = cat_query_response(qids, qmask, responses)  # (B, T)
    F = plan.depth if plan is not None else 0
    with timer("logprobs"):
        for c, sl in enumerate(chunks):
            if plan is None and sampler is None:
                logits, values = policy(ids[sl], mask[sl], R, T)
                lp.append(logprobs_of(logits, responses[sl]))
                vals.append(values)
            ref_logits, _ = ref(
                ids[sl], mask[sl], R, T, with_values=False, hidden=hidden[c].get(F) if F else None, depth=F
            )
            rlp.append(logprobs_of(ref_logits, responses[sl]))
    with timer("reward"):
        lengths, valid = postprocess(responses.cpu(), task, tokenizer)
        last = Q + lengths.to(device) - 1
        scores = torch.cat(
            [
                reward_scores(
                    reward_fn,
                    ids[sl],
                    mask[sl],
                    last[sl],
                    Q,
                    hidden[c] if hidden else None,
                    plan.reward_depth if plan else 0,
                )
                for c, sl in enumerate(chunks)
            ]
        ).float()  # (B,)
        scores = apply_penalty(scores, valid, task.penalty_reward)
    kept = torch.cat([h[F] for h in hidden]) if F else None
    return Rollout(
        qids,
        qmask,
        responses,
        torch.cat(lp),
        torch.cat(rlp),
        torch.cat(vals),
        scores,
        valid.to(device),
        lengths.to(device),
        kept,
        F,
    )


def _upper(ro: Rollout, idx) -> dict:
    """The policy's forward kwargs that start it at the rollout's shared depth (none without one)."""
    return {"hidden": ro.hidden[idx], "depth": ro.depth} if ro.hidden is not None else {}


def ppo_update(
    policy,
    optimizer,
    ro: Rollout,
    kl_coef: float,
    cfg: PPOConfig,
    task: TaskConfig,
    generator: torch.Generator,
    *,
    micro_batch: int | None = None,
    accelerator=None,
) -> dict:
    """Shape the rewards, estimate advantages, then `cfg.epochs` epochs of clipped PPO. `micro_batch`
    overrides `cfg.micro_batch_size` (train_policy passes the size probed for -1). With an
    `accelerator` the gradients are all-reduced once per minibatch (DDP) and β's KL is averaged
    over processes; the whitening stays per process, as in lm-human-preferences."""
    rewards, kl = kl_shaped_rewards(ro.logprobs, ro.ref_logprobs, ro.scores, kl_coef)  # (B, R)
    # The score PPO is fed, read back from the shaped rewards: it must equal the reward model's
    # (objective/scores); where the two move apart a sign is flipped in between (direction_guard).
    scores_seen = (rewards.sum(1) + kl_coef * kl.sum(1)).mean()
    if cfg.whiten_rewards:
        rewards = whiten(rewards, shift_mean=False)
    advantages, returns = gae(rewards, ro.values, cfg.gamma, cfg.lam)
    advantages = whiten(advantages)
    ids, mask = cat_query_response(ro.query_ids, ro.query_mask, ro.responses)
    B, R = ro.responses.shape
    mb = B // cfg.minibatches
    micro = micro_batch or (cfg.micro_batch_size if cfg.micro_batch_size > 0 else mb)
    stats: dict[str, list[float]] = {}
    policy.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(B, generator=generator).to(ids.device)
        for start in range(0, B, mb):
            optimizer.zero_grad()
            for ms in range(start, start + mb, micro):
                idx = order[ms : ms + micro]  # (b,)
                with no_sync(policy, accelerator, sync=ms + micro >= start + mb):
                    with autocast(ids.device, cfg.mixed_precision):
                        logits, vpred = policy(ids[idx], mask[idx], R, task.temperature, **_upper(ro, idx))
                    new_lp, entropy = logprobs_and_entropy(logits, ro.responses[idx])  # one log-softmax for both
                    pg_loss, vf_loss, st = ppo_losses(
                        new_lp,
                        ro.logprobs[idx],
                        advantages[idx],
                        vpred,
                        ro.values[idx],
                        returns[idx],
                        cfg.cliprange,
                        cfg.cliprange_value,
                    )
                    loss = (pg_loss + cfg.vf_coef * vf_loss) * (len(idx) / mb)
                    backward(loss, accelerator)
                st.update({"ppo/loss/policy": pg_loss.item(), "ppo/loss/value": vf_loss.item()})
                st["objective/entropy"] = entropy.sum(-1).mean().item()
                for k, v in st.items():
                    stats.setdefault(k, []).append(v)
            if cfg.max_grad_norm:
                params = [p for p in policy.parameters() if p.requires_grad]
                (accelerator.clip_grad_norm_ if accelerator else torch.nn.utils.clip_grad_norm_)(
                    params, cfg.max_grad_norm
                )
            optimizer.step()
    policy.eval()
    out = {k: float(np.mean(v)) for k, v in stats.items()}
    out.update(
        {
            "objective/kl": mean_across(kl.sum(1).mean(), accelerator).item(),
            "objective/scores": mean_across(ro.scores.mean(), accelerator).item(),
            "objective/score_total": (ro.scores - kl_coef * kl.sum(1)).mean().item(),
            "ppo/scores_seen": mean_across(scores_seen, accelerator).item(),
            "objective/valid_fraction": ro.valid.float().mean().item(),
            "ppo/returns/mean": returns.mean().item(),
            "ppo/val/error": ((ro.values - returns) ** 2).mean().item(),
        }
    )
    return out


def micro_batch_from_memory(policy, ro: Rollout, cfg: PPOConfig, task: TaskConfig) -> int:
    """`ppo.micro_batch_size = -1`: the largest power-of-two share of the minibatch whose forward and
    backward fit in memory, leaving room for Adam's two moments (not allocated before the first step)."""
    B, R = ro.responses.shape
    ids, mask = cat_query_response(ro.query_ids, ro.query_mask, ro.responses)
    local = [
        p.to_local() if hasattr(p, "to_local") else p for p in policy.parameters() if p.requires_grad
    ]  # this process's FSDP shard
    adam_bytes = 2 * sum(p.numel() * 4 for p in local)

    def try_batch(n: int) -> None:
        if ids.is_cuda:
            torch.cuda.reset_peak_memory_stats()
        with autocast(ids.device, cfg.mixed_precision):
            logits, vpred = policy(ids[:n], mask[:n], R, task.temperature, **_upper(ro, slice(0, n)))
        (logprobs_and_entropy(logits, ro.responses[:n])[0].sum() + vpred.sum()).backward()  # as ppo_update
        policy.zero_grad(set_to_none=True)
        if ids.is_cuda and torch.cuda.max_memory_allocated() + adam_bytes > 0.92 * torch.cuda.mem_get_info()[1]:
            raise torch.OutOfMemoryError(f"micro-batch {n} leaves no room for the optimizer state")

    return fit_micro_batch(try_batch, B // cfg.minibatches)


def train_policy(
    policy,
    ref,
    reward_fn: Callable,
    tokenizer,
    next_queries: Callable[[int, int], list],
    cfg: PPOConfig,
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
    accelerator=None,
) -> dict:
    """Run PPO updates until `cfg.total_episodes`. `next_queries(update, n)` gives the queries of an
    update (deterministic, so a resumed run sees the same stream). `state` ({"update", "kl_coef"})
    and `optimizer` come from a checkpoint when resuming. `should_stop()` is read between updates
    (the Andon cord): a reason string halts the run after checkpointing.

    With an `accelerate.Accelerator` (policy and optimizer already `prepare`d) each process rolls out
    its share of the batch (queries rank::world), DDP all-reduces the gradients (FSDP2 reduce-scatters
    them to the shards and gathers the parameters for each rollout), the main process alone logs and
    decides whether to stop, and `checkpoint` is called on every process (gathering a sharded state
    is collective; the callback writes on the main process only). How the processes were launched is
    checked by the caller (`lmpref.steps.launch`)."""
    num_updates = cfg.total_episodes // cfg.batch_size
    rank, world = rank_world(accelerator)
    if cfg.batch_size % (world * cfg.minibatches):
        raise ValueError(
            f"ppo.batch_size={cfg.batch_size} must split into {world} processes x {cfg.minibatches} minibatches"
        )
    state = dict(state or {"update": 0, "kl_coef": cfg.kl_coef})
    state.pop(
        "stopped", None
    )  # a checkpoint saved on a stop resumes as a running run, or its end would not save the policy
    kl_ctl = AdaptiveKLController(state["kl_coef"], cfg.kl_target if cfg.adaptive_kl else None, cfg.kl_horizon)
    if optimizer is None:
        optimizer = make_optimizer([p for p in policy.parameters() if p.requires_grad], cfg)
    sampler = StaticSampler(compile=enabled(cfg.compile, device)) if enabled(cfg.fast_sampling, device) else None
    # The shared frozen trunk (lmpref.core.trunk): one plain process without the static sampler.
    plan = (
        trunk_plan(unwrap(policy, accelerator).lm, ref.lm, reward_fn)
        if cfg.shared_trunk and world == 1 and unwrap(policy, accelerator) is policy and sampler is None
        else None
    )
    micro = None  # resolved on the first update when cfg.micro_batch_size is -1 (fit to memory)
    bar = tqdm(total=num_updates, initial=state["update"], desc="PPO", unit="update", disable=rank != 0)
    while state["update"] < num_updates:
        if should_stop and (reason := from_main(should_stop() if rank == 0 else None, accelerator)):
            state["stopped"] = reason
            break
        update = state["update"] + 1
        lr = cfg.lr * (1 - (update - 1) / num_updates) if cfg.anneal_lr else cfg.lr
        for g in optimizer.param_groups:
            g["lr"] = lr
        timer = PhaseTimer(device)
        torch.manual_seed(
            (seed * 1_000_003 + update) * world + rank
        )  # sampling noise is a function of (seed, update, rank)
        queries = next_queries(update, cfg.batch_size)[rank::world]
        with timer("rollout"), gathered(policy, accelerator), autocast(device, cfg.mixed_precision):
            ro = rollout(
                unwrap(policy, accelerator),
                ref,
                reward_fn,
                tokenizer,
                queries,
                task,
                forward_batch=forward_batch,
                device=device,
                sampler=sampler,
                timer=timer,
                plan=plan,
            )
        if micro is None and cfg.micro_batch_size == -1:
            micro = micro_batch_from_memory(policy, ro, cfg, task)
        gen = torch.Generator().manual_seed(seed * 7_919 + update)
        with timer("train"):
            stats = ppo_update(
                policy, optimizer, ro, kl_ctl.value, cfg, task, gen, micro_batch=micro, accelerator=accelerator
            )
        stats.update(
            {
                "step": update,
                "episodes": update * cfg.batch_size,
                "objective/kl_coef": kl_ctl.value,
                "ppo/lr": lr,
                "ppo/micro_batch": micro or 0,
                **{f"time/{k}": v for k, v in timer.times.items()},
            }
        )
        kl_ctl.update(stats["objective/kl"], cfg.batch_size)
        state.update(update=update, kl_coef=kl_ctl.value)
        if log and rank == 0:
            log(stats)
        bar.update()
        bar.set_postfix(score=f"{stats['objective/scores']:.3f}", kl=f"{stats['objective/kl']:.2f}")
        if checkpoint and (update % cfg.checkpoint_every == 0 or update == num_updates):
            checkpoint(update, state, optimizer)
    bar.close()
    if state.get("stopped") and checkpoint:
        checkpoint(state["update"], state, optimizer)
    return state
