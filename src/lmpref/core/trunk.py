"""The shared frozen trunk: compute the lower blocks once per sequence, run only the trained ones.

At the small scales only the top `model.trainable_layers` blocks of the policy train. Its embeddings
and lower F blocks then compute the same function as ρ's, and as the reward model's when that starts
from the same base model. So the hidden states after block F are computed once per sequence - by the
sampling pass itself, which runs them anyway - and every model runs only its own blocks above F on
them: the policy's log-probs and values (in every PPO epoch), ρ's log-probs, the reward model's
score. Gradients are unchanged: nothing below F trains. tests/test_trunk.py checks every shared path
against the plain full forward.

`shared_depth` finds F by comparing the models' weights (not by trusting the config), so a reward
model trained from another base, a policy whose lower blocks were trained, or a different ρ simply
share less (F = 0: the plain full forward everywhere).

Shapes: B batch (queries), k samples per query, N = B·k, Q query length, R response length,
T = Q + R, F shared depth, D hidden size, V vocab.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from lmpref.core.models import block_output, position_ids_from_mask, transformer_blocks

# ---------------------------------------------------------------------------------------------
# Which blocks are shared


def _lower_named_params(lm: nn.Module, depth: int) -> list[list[tuple[str, torch.Tensor]]]:
    """[parameters below the blocks (embeddings), then block 0, ..., block depth-1]."""
    blocks = transformer_blocks(lm)
    in_blocks = {id(p) for p in blocks.parameters()}
    # Final norms (children of the trunk that come after the blocks) are not part of the lower pass.
    tail = {
        id(p)
        for name, m in lm.base_model.named_children()
        if "norm" in type(m).__name__.lower() or name in ("ln_f", "norm")
        for p in m.parameters()
    }
    embeddings = [(n, p) for n, p in lm.base_model.named_parameters() if id(p) not in in_blocks and id(p) not in tail]
    return [embeddings] + [list(blocks[i].named_parameters()) for i in range(depth)]


def shared_depth(*lms: nn.Module) -> int:
    """The largest F such that the embeddings and blocks 0..F-1 are frozen in every model and hold
    the same weights (bit for bit). 0 when the embeddings differ or train."""
    lms = [lm for lm in lms if lm is not None]
    n = min(lm.config.num_hidden_layers for lm in lms)
    groups = [_lower_named_params(lm, n) for lm in lms]
    depth = -1  # -1: not even the embeddings are shared
    for level in range(n + 1):
        first = groups[0][level]
        for other in groups[1:]:
            theirs = other[level]
            if len(theirs) != len(first) or any(
                a.shape != b.shape or not torch.equal(a, b) for (_, a), (_, b) in zip(first, theirs)
            ):
                return max(depth, 0)
        if any(p.requires_grad for g in groups for _, p in g[level]):
            return max(depth, 0)
        depth = level
    return depth


# ---------------------------------------------------------------------------------------------
# Sampling that keeps what the other models need


def _cache_kwarg(lm) -> str:
    return "cache" if "cache" in inspect.signature(lm.base_model.forward).parameters else "past_key_values"


@dataclass
class Samples:
    responses: torch.Tensor  # (N, R) sampled ids
    logprobs: torch.Tensor  # (N, R) log π of each sampled token (temperature-scaled logits, as in training)
    values: torch.Tensor | None  # (N, R) value-head outputs, when a value head is given
    hidden: dict[int, torch.Tensor]  # depth F -> (N, T, D) hidden states after block F-1 of query + response
    query_ids: torch.Tensor  # (N, Q) each query repeated k times
    query_mask: torch.Tensor  # (N, Q)


@torch.no_grad()
def sample(
    lm: nn.Module,
    query_ids,
    query_mask,
    *,
    k: int = 1,
    response_length: int,
    temperature: float,
    depths: Sequence[int] = (),
    value_head: nn.Module | None = None,
) -> Samples:
    """Sample `k` continuations of `response_length` tokens per query (pure sampling at `temperature`,
    no early stop: EOS is masked as HF's `min_new_tokens` does), with a KV cache.

    The query is run once and its cache repeated k times. The log-probs (and values) of the sampled
    tokens come from the sampling pass itself, and for each F in `depths` (> 0) the hidden states after
    block F-1 of every position are kept (a hook on that block), so ρ, the reward model and the PPO
    epochs can start from them. (B, Q) -> Samples of N = B·k."""
    B, Q = query_ids.shape
    R = response_length
    kw = _cache_kwarg(lm)
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.config)
    depths = sorted({d for d in depths if d > 0})
    kept: dict[int, list[torch.Tensor]] = {d: [] for d in depths}
    blocks = transformer_blocks(lm)
    handles = [
        blocks[d - 1].register_forward_hook(lambda m, a, o, d=d: kept[d].append(block_output(o))) for d in depths
    ]
    head = lm.get_output_embeddings()
    eos = lm.generation_config.eos_token_id if lm.generation_config is not None else None
    eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    eos = [e for e in eos if 0 <= e < head.weight.shape[0]]  # a config may name an id outside the vocabulary
    try:
        pos = position_ids_from_mask(query_mask)  # (B, Q)
        h = lm.base_model(
            input_ids=query_ids, attention_mask=query_mask, position_ids=pos, use_cache=True, **{kw: cache}
        ).last_hidden_state[:, -1]  # (B, D)
        if k > 1:
            cache.batch_repeat_interleave(k)
            h = h.repeat_interleave(k, 0)
            kept = {d: [x.repeat_interleave(k, 0) for x in xs] for d, xs in kept.items()}
        qids, qmask = query_ids.repeat_interleave(k, 0), query_mask.repeat_interleave(k, 0)  # (N, Q)
        mask = qmask
        next_pos = pos[:, -1:].repeat_interleave(k, 0) + 1  # (N, 1)
        tokens, logprobs, values = [], [], []
        for t in range(R):
            logits = head(h).float() / temperature  # (N, V)
            if value_head is not None:
                values.append(value_head(h).squeeze(-1).float())
            masked = logits.clone()
            masked[:, eos] = -float("inf")
            token = torch.multinomial(torch.softmax(masked, -1), 1)  # (N, 1)
            logprobs.append(torch.log_softmax(logits, -1).gather(1, token).squeeze(1))
            tokens.append(token.squeeze(1))
            # The last token is fed too when the hidden states are kept: the reward model reads them.
            if t < R - 1 or depths:
                mask = torch.cat([mask, torch.ones_like(token)], 1)
                h = lm.base_model(
                    input_ids=token, attention_mask=mask, position_ids=next_pos, use_cache=True, **{kw: cache}
                ).last_hidden_state[:, -1]
                next_pos = next_pos + 1
    finally:
        for handle in handles:
            handle.remove()
    hidden = {d: torch.cat(xs, 1) for d, xs in kept.items()}  # (N, Q + R, D) each
    return Samples(
        torch.stack(tokens, 1),
        torch.stack(logprobs, 1),
        torch.stack(values, 1) if value_head is not None else None,
        hidden,
        qids,
        qmask,
    )


# ---------------------------------------------------------------------------------------------
# What a training run shares


@dataclass(frozen=True)
class Plan:
    """Where the policy's sampling pass hands over: ρ and the PPO epochs start at `depth` (F), the
    reward model at `reward_depth` (0: it runs whole, e.g. a reward model trained from another base)."""

    depth: int
    reward_depth: int

    @property
    def depths(self) -> tuple[int, ...]:
        return tuple(d for d in (self.depth, self.reward_depth) if d > 0)


def plan(policy_lm: nn.Module, ref_lm: nn.Module, reward_fn) -> Plan:
    """F from the weights of the policy and ρ; the reward model's depth from its own trunk (all of
    its blocks when its lower part is the policy's, as with `reward.layers` and a frozen trunk)."""
    from lmpref.core.reward import RewardModel

    depth = shared_depth(policy_lm, ref_lm)
    # A template's tokens are not in the sampling pass, and a response-only model never saw the query.
    shares = isinstance(reward_fn, RewardModel) and not len(reward_fn.template) and not reward_fn.response_only
    reward_depth = shared_depth(policy_lm, reward_fn.clf) if shares else 0
    return Plan(depth, reward_depth)


def reward_scores(
    reward_fn, ids, mask, last_index, query_length: int, hidden: dict[int, torch.Tensor] | None = None, depth: int = 0
) -> torch.Tensor:
    """Scores of query + response sequences (B,): a RewardModel reads its pooling's positions (and
    starts from `hidden[depth]` when given); any other callable is called as f(ids, mask, last_index)."""
    from lmpref.core.reward import RewardModel

    if not isinstance(reward_fn, RewardModel):
        return reward_fn(ids, mask, last_index)
    h = hidden.get(depth) if hidden and depth else None
    return reward_fn(ids, mask, last_index, query_length, hidden=h, depth=depth if h is not None else 0)
