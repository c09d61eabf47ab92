"""What every step that loads a model does first: threads, seeds and device from the config
(`setup`), and the reference model ρ (`load_reference`); used by the training and evaluation steps."""

from __future__ import annotations

import random

import numpy as np
import torch

from lmpref.config import RunConfig
from lmpref.core.loading import load_causal_lm
from lmpref.core.models import PolicyWithValue


def setup(cfg: RunConfig) -> torch.device:
    """Seed every generator, cap the CPU threads, and pick the device."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialized score.weight" report is expected here
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_reference(cfg: RunConfig, device) -> PolicyWithValue:
    """The reference model ρ (`model.name`), frozen: the KL anchor of PPO and a policy in evaluation."""
    ref = (
        PolicyWithValue(
            load_causal_lm(cfg.model.name, cfg.model.cache_dir, cfg.model.dtype, cfg.model.attn_implementation)
        )
        .to(device)
        .eval()
    )
    ref.requires_grad_(False)
    return ref
