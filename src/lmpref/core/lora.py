"""LoRA adapters (Hu et al. 2021) through the `peft` library, on the policy and on the reward model.

With `model.lora_rank > 0` the policy's base weights stay frozen and only low-rank adapters on the
attention projections of its top `model.trainable_layers` blocks (all blocks with -1) train, with the
value head. The reference model ρ is then the same base with the adapters switched off
(`PeftModel.disable_adapter()`, `AdaptersOff`): no second copy of the model in memory. The adapters
sit only in the trained blocks, so the blocks below them are the base's bit for bit and the shared
frozen trunk (lmpref.core.trunk) shares them between π and ρ as it does without LoRA.

A saved policy holds the merged weights (base + B·A·alpha/rank), loadable by plain transformers, and
the adapter alone in `adapter/`, loadable by plain peft: `PeftModel.from_pretrained(base, dir/adapter)`.
The merge is computed from a state dict: the live base weights are never changed, so ρ stays exact.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from lmpref.config import ConfigError
from lmpref.core.models import transformer_blocks

ADAPTER_DIR = "adapter"  # beside the merged weights of a saved policy or checkpoint
_ATTENTION = ("attn", "attention")  # the attention submodule of a block, in every architecture we load


def _projections(lm: nn.Module, trainable_layers: int) -> dict[str, str]:
    """Full name -> name inside its block, of every linear layer in the blocks that may train (the
    top `trainable_layers`, all with -1)."""
    from transformers.pytorch_utils import Conv1D

    blocks = transformer_blocks(lm)
    prefix = next(name for name, m in lm.named_modules() if m is blocks)
    first = 0 if trainable_layers < 0 else max(0, len(blocks) - trainable_layers)
    return {
        f"{prefix}.{i}.{name}": name
        for i in range(first, len(blocks))
        for name, m in blocks[i].named_modules()
        if isinstance(m, (nn.Linear, Conv1D))
    }


def target_modules(lm: nn.Module, spec: str, trainable_layers: int, key: str) -> list[str]:
    """The full names of the layers that get adapters: those whose own name is in the comma-separated
    `spec`, or (spec '') every linear layer inside the attention submodule (GPT-2 c_attn and
    attn.c_proj; Llama q_proj, k_proj, v_proj, o_proj). ConfigError names an unknown one."""
    layers = _projections(lm, trainable_layers)
    if not layers:
        raise ConfigError(f"{key.rsplit('.', 1)[0]}.trainable_layers={trainable_layers} leaves no block for LoRA")
    if not spec.strip():
        chosen = [n for n, short in layers.items() if any(a in short.split(".")[0] for a in _ATTENTION)]
        if not chosen:
            raise ConfigError(f"{key}: no attention projection found; name the layers, e.g. {key}=q_proj,v_proj")
        return chosen
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    have = {short.rsplit(".", 1)[-1] for short in layers.values()} | set(layers.values())
    unknown = [w for w in wanted if w not in have]
    if unknown:
        raise ConfigError(
            f"{key}={spec!r}: {', '.join(unknown)} is no linear layer of {type(lm).__name__}'s blocks; "
            f"choose from {', '.join(sorted(have))}"
        )
    return [n for n, short in layers.items() if short in wanted or short.rsplit(".", 1)[-1] in wanted]


def check_targets(name: str, cache_dir: str, spec: str, trainable_layers: int, key: str) -> None:
    """Check `spec` against the model's layer names without loading its weights (a meta-device
    model built from its config): a typo fails before any work starts."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from lmpref.core.loading import _hub_error, resolve_model

    try:
        config = AutoConfig.from_pretrained(resolve_model(name, cache_dir))
    except (OSError, ValueError) as e:
        raise _hub_error(name, e) from e
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config)
    target_modules(lm, spec, trainable_layers, key)


def check_config(cfg) -> None:
    """The LoRA layer names of the policy and of the reward model (RunConfig), checked against the
    models' configs before any work starts (ranks and sizes are checked by `RunConfig.check`)."""
    m, r = cfg.model, cfg.reward
    if m.lora_rank:
        check_targets(m.name, m.cache_dir, m.lora_target_modules, m.trainable_layers, "model.lora_target_modules")
    if r.lora_rank:
        layers = r.trainable_layers if r.trainable_layers >= 0 else m.trainable_layers
        trunk = m.reward_model or m.name
        check_targets(trunk, m.cache_dir, r.lora_target_modules, layers, "reward.lora_target_modules")


def attach(lm: nn.Module, *, rank: int, alpha: float, dropout: float, spec: str, trainable_layers: int, key: str):
    """Put fresh adapters on `lm` in place (its modules are wrapped; `lm` stays the transformers model)
    and freeze everything else. Returns the `peft.PeftModel` around it (for `disable_adapter`, saving)."""
    from peft import LoraConfig, get_peft_model

    names = target_modules(lm, spec, trainable_layers, key)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=names,
        fan_in_fan_out=getattr(lm.config, "model_type", "") == "gpt2",  # GPT-2's Conv1D stores W as (in, out)
    )
    return get_peft_model(lm, config)


def load_adapter(lm: nn.Module, adapter_dir: str | Path):
    """Put saved adapters on `lm` (the base), trainable: what a resumed run continues from."""
    from peft import PeftModel

    return PeftModel.from_pretrained(lm, str(adapter_dir), is_trainable=True)


def adapt_policy(policy, model_cfg, adapter_dir: str | Path | None = None) -> None:
    """Give a `PolicyWithValue` on the base model LoRA adapters as `model_cfg` (ModelConfig) asks:
    fresh ones, or those saved in `adapter_dir` (a resumed run). The base freezes; the adapters and the
    value head train."""
    if adapter_dir is not None:
        peft_model = load_adapter(policy.lm, adapter_dir)
    else:
        peft_model = attach(
            policy.lm,
            rank=model_cfg.lora_rank,
            alpha=model_cfg.lora_alpha,
            dropout=model_cfg.lora_dropout,
            spec=model_cfg.lora_target_modules,
            trainable_layers=model_cfg.trainable_layers,
            key="model.lora_target_modules",
        )
    object.__setattr__(policy, "peft", peft_model)
    policy.value_head.requires_grad_(True)


def is_adapted(lm: nn.Module) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in lm.modules())


def merged_state(lm: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`lm`'s state dict (with adapters) -> the plain model's: W + scaling·(B·A) at each adapted layer,
    the adapter tensors dropped. Computed from `state` (which may be gathered from shards); nothing live
    changes."""
    from peft.tuners.lora import LoraLayer

    out = dict(state)
    for name, module in lm.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.lora_A:
            a = out.pop(f"{name}.lora_A.{adapter}.weight")  # (r, in)
            b = out.pop(f"{name}.lora_B.{adapter}.weight")  # (out, r)
            delta = (b.float() @ a.float()) * module.scaling[adapter]  # (out, in)
            if module.fan_in_fan_out:
                delta = delta.T
            weight = out[f"{name}.base_layer.weight"]
            out[f"{name}.base_layer.weight"] = (weight.float() + delta).to(weight.dtype)
    return {k.replace(".base_layer.", "."): v for k, v in out.items()}


def save_adapter(peft_model, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """The adapter alone (adapter_config.json + adapter_model.safetensors), from `state` keyed as the
    inner model's state dict: `PeftModel.from_pretrained(base, path)` loads it."""
    peft_model.save_pretrained(str(path), state_dict={f"base_model.model.{k}": v for k, v in state.items()})


class AdaptersOff:
    """ρ when the policy has LoRA: the policy's own forward with its adapters disabled, i.e. the base
    model. Called as a `PolicyWithValue` is (`ref(ids, mask, R, T, with_values=False, ...)`); `lm` is
    the policy's, so lmpref.core.trunk sees the two share every block without adapters."""

    def __init__(self, policy):
        self.policy = policy
        self.lm = policy.lm

    @contextlib.contextmanager
    def _off(self):
        with self.policy.peft.disable_adapter():
            yield

    def __call__(self, *args, **kwargs):
        with self._off():
            return self.policy(*args, **kwargs)

    def eval(self) -> AdaptersOff:
        return self

    def parameters(self):
        """The policy's parameters (where ρ's weights live: read for their device)."""
        return self.policy.parameters()
