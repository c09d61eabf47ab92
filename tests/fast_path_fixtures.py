"""Shared by the fast-path tests on CPU (test_fast_paths.py) and on CUDA (test_fast_paths_cuda.py)."""

import torch

from lmpref.core.loading import load_causal_lm
from lmpref.core.models import PolicyWithValue
from lmpref.records import TaskQuery


def tiny_policy() -> PolicyWithValue:
    """tiny-gpt2 with a value head that is not zero (else the values would all be 0) and no dropout
    (its draws differ with the micro-batch split; the paper's PPO has none)."""
    torch.manual_seed(0)
    p = PolicyWithValue(load_causal_lm("tiny-gpt2")).eval()
    torch.nn.init.normal_(p.value_head.weight, std=0.5)
    for m in p.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return p


def queries(tok, n: int) -> list[TaskQuery]:
    return [
        TaskQuery(id=str(i), text="", ids=tok.encode(f"Once upon a time {'there ' * (i % 3)}was {i}")) for i in range(n)
    ]
