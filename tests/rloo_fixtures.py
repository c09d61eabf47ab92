"""The tiny RLOO learning task shared by tests/test_rloo.py and tests/test_lora.py: a 16-token GPT-2
rewarded for low-id response tokens, 25 updates of 32 episodes, and the learning it must show."""

from __future__ import annotations

import random

import torch

from lmpref.config import make_config

VOCAB = 16


def tiny_rloo_config(**overrides):
    return make_config(
        "test",
        "tiny",
        {
            "rloo.total_episodes": 32 * 25,
            "rloo.batch_size": 32,
            "rloo.k": 4,
            "rloo.lr": 3e-3,
            "rloo.kl_coef": 0.05,
            "task.query_length": 6,
            **overrides,
        },
    )


class _IdTokenizer:
    pad_token_id = 0


def run_tiny_rloo(policy, ref, cfg) -> tuple[dict, list[dict]]:
    """Train `policy` against `ref` on the task; returns the final state and every update's metrics."""
    from lmpref.core.rloo import train_rloo
    from lmpref.records import TaskQuery

    R = cfg.task.response_length

    def reward_fn(ids, mask, last_index):  # share of low-id response tokens, centred: (B,)
        return (ids[:, -R:] < VOCAB // 2).float().mean(1) * 2 - 1

    rng = random.Random(0)
    queries = [TaskQuery(id=str(i), text="", ids=[rng.randrange(1, VOCAB) for _ in range(6)]) for i in range(64)]
    stats: list[dict] = []
    state = train_rloo(
        policy,
        ref,
        reward_fn,
        _IdTokenizer(),
        lambda update, n: rng.sample(queries, n),
        cfg.rloo,
        cfg.task,
        seed=0,
        device=torch.device("cpu"),
        log=stats.append,
    )
    return state, stats


def assert_learned(state: dict, stats: list[dict]) -> None:
    """25 updates; the reward rose by > 0.3; KL moved away from ρ, and not without bound."""
    assert state["update"] == 25 == len(stats)
    scores = [s["objective/scores"] for s in stats]
    first, last = sum(scores[:3]) / 3, sum(scores[-3:]) / 3
    assert last > first + 0.3, f"reward did not rise: {scores}"
    kls = [s["objective/kl"] for s in stats]
    assert 0.1 < sum(kls[-3:]) / 3 < 8, kls
