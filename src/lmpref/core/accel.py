"""Fast paths for PPO on an accelerator, and the few multi-process helpers the loop needs.

Each fast path replaces a plain one and gives the same numbers within float tolerance; each is
checked against its plain twin on CPU in tests/test_fast_paths.py:

  StaticSampler     the decode loop on a static KV cache (optionally torch.compile'd with CUDA graphs),
                    no host sync per token, returning the policy's log-probs and values from the
                    sampling pass itself, so the rollout needs no second policy forward.
                    Plain twin: `sampling.generate` (HF `generate`) + a `PolicyWithValue` forward.
  fit_micro_batch   the largest micro-batch that fits in memory (halving on out-of-memory).
                    Plain twin: a fixed `ppo.micro_batch_size`; gradient accumulation makes them equal.
  make_optimizer    (in ppo.py) torch's fused Adam kernel. Plain twin: the for-each Adam.

Flags take 'on' | 'off' | 'auto'; 'auto' means on with CUDA, off on CPU.

Multi-GPU goes through `accelerate.Accelerator`: DDP, FSDP2 (parameters sharded; `gathered` gathers
them for the rollout) and DeepSpeed ZeRO-1/2. `accelerator=None` everywhere means one plain process.
Shapes: B batch, Q query length, R response length, D hidden, V vocab.
"""

from __future__ import annotations

import contextlib
import time

import torch

from lmpref.core.models import position_ids_from_mask


def enabled(flag: str, device) -> bool:
    """Resolve an 'on' | 'off' | 'auto' flag; 'auto' is on with CUDA only."""
    if flag not in ("on", "off", "auto"):
        raise ValueError(f"expected on | off | auto, got {flag!r}")
    return flag == "on" or (flag == "auto" and torch.device(device).type == "cuda")


def bf16_is_fast(device) -> bool:
    """Whether bf16 matrix products run in hardware on `device`: a CUDA GPU that supports bf16, or a
    CPU with AVX-512 BF16 or AMX (elsewhere CPU bf16 is emulated and slower than float32)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    return False


def resolve_mixed_precision(mixed_precision: str, device) -> str:
    """'no' | 'bf16' as given; 'auto' is bf16 where `bf16_is_fast(device)`, else 'no'."""
    if mixed_precision not in ("no", "bf16", "auto"):
        raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'auto', not {mixed_precision!r}")
    if mixed_precision == "auto":
        return "bf16" if bf16_is_fast(device) else "no"
    return mixed_precision


def autocast(device, mixed_precision: str):
    """bf16 autocast with float32 master weights (what TRL's `bf16=True` does), or nothing; 'auto'
    as `resolve_mixed_precision`."""
    if resolve_mixed_precision(mixed_precision, device) == "no":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


# ---------------------------------------------------------------------------------------------
# Sampling on a static KV cache


def _decode_step(lm, tokens, attention_mask, position_ids, cache):
    """One token through the trunk with the cache: (B, 1) -> hidden (B, 1, D)."""
    return lm.base_model(
        input_ids=tokens,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
    ).last_hidden_state


class StaticSampler:
    """Sample R tokens per query exactly as `sampling.generate` does (same RNG draws, EOS masked as
    `min_new_tokens` masks it) and keep the policy's log-probs and values from the same pass.

    The KV cache has a fixed shape (B, heads, Q+R, head dim) and is kept between rollouts, so a
    compiled decode step (`compile=True`: torch.compile mode 'reduce-overhead', i.e. CUDA graphs)
    is captured once and replayed. Nothing in the loop reads a tensor back to the host.
    """

    def __init__(self, compile: bool = False, compile_backend: str = "inductor"):
        self.caches: dict[tuple, object] = {}
        self.step = _decode_step
        if compile:
            mode = "reduce-overhead" if compile_backend == "inductor" else None
            self.step = torch.compile(_decode_step, mode=mode, backend=compile_backend)

    def _cache(self, lm, B: int, length: int, device, dtype):
        from transformers import StaticCache

        key = (id(lm), B, length, str(device), dtype)
        if key not in self.caches:
            self.caches[key] = StaticCache(config=lm.config, max_cache_len=length)
        cache = self.caches[key]
        cache.reset()  # zero the write position (and the tensors), keeping their addresses for CUDA graphs
        return cache

    @torch.no_grad()
    def __call__(self, policy, query_ids, query_mask, *, response_length: int, temperature: float):
        """(B, Q) queries -> responses (B, R), log-probs (B, R) and values (B, R), all float32 where real."""
        lm, R = policy.lm, response_length
        B, Q = query_ids.shape
        dtype = (
            torch.get_autocast_dtype(query_ids.device.type)
            if torch.is_autocast_enabled(query_ids.device.type)
            else next(lm.parameters()).dtype
        )
        cache = self._cache(lm, B, Q + R, query_ids.device, dtype)
        mask = torch.cat(
            [query_mask, torch.ones(B, R, dtype=query_mask.dtype, device=query_mask.device)], 1
        )  # (B, Q+R)
        pos = position_ids_from_mask(mask)  # (B, Q+R)
        eos = lm.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        head = lm.get_output_embeddings()
        # Prefill runs uncompiled (its shape differs from the decode step's); the full-length mask
        # keeps every step's shapes identical, the cache's own counter gives the write position.
        h = lm.base_model(
            input_ids=query_ids, attention_mask=mask, position_ids=pos[:, :Q], past_key_values=cache, use_cache=True
        ).last_hidden_state[:, -1]  # (B, D)
        responses, logprobs, values = [], [], []
        for t in range(R):
            logits = head(h).float() / temperature  # (B, V), as PolicyWithValue.forward
            values.append(policy.value_head(h).squeeze(-1).float())  # (B,)
            scores = logits.clone()
            scores[:, eos] = -float("inf")  # HF's MinNewTokensLengthLogitsProcessor: never end early
            token = torch.multinomial(torch.softmax(scores, -1), 1)  # (B, 1), the same draw as HF's sampler
            logprobs.append(torch.log_softmax(logits, -1).gather(1, token).squeeze(1))  # (B,) under π, unmasked
            responses.append(token.squeeze(1))
            if t < R - 1:
                h = self.step(lm, token, mask, pos[:, Q + t : Q + t + 1], cache)[:, -1].clone()  # (B, D)
        return torch.stack(responses, 1), torch.stack(logprobs, 1), torch.stack(values, 1)


# ---------------------------------------------------------------------------------------------
# Memory and timing


def fit_micro_batch(try_batch, start: int, minimum: int = 1) -> int:
    """The largest of start, start/2, ... (>= minimum) for which `try_batch(n)` (a forward and backward
    of n episodes) does not run out of memory."""
    n = start
    while True:
        try:
            try_batch(n)
            return n
        except torch.OutOfMemoryError:
            if n // 2 < minimum:
                raise
            n //= 2
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


class PhaseTimer:
    """Wall time per phase, accumulated; synchronises CUDA at each boundary so the times are real."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Processes (accelerator=None: one plain process)


def rank_world(accelerator) -> tuple[int, int]:
    return (0, 1) if accelerator is None else (accelerator.process_index, accelerator.num_processes)


def unwrap(model, accelerator):
    return model if accelerator is None else accelerator.unwrap_model(model)


def backward(loss, accelerator) -> None:
    loss.backward() if accelerator is None else accelerator.backward(loss)


def no_sync(model, accelerator, sync: bool):
    """Skip DDP's gradient all-reduce on all but the last micro-batch of a minibatch."""
    return contextlib.nullcontext() if accelerator is None or sync else accelerator.no_sync(model)


def mean_across(x: torch.Tensor, accelerator) -> torch.Tensor:
    """Mean of a tensor over processes (the KL that drives β must be the same everywhere)."""
    return x if accelerator is None or accelerator.num_processes == 1 else accelerator.reduce(x, reduction="mean")


def from_main(value, accelerator):
    """The main process's `value` on every process (a decision such as the Andon cord's must be taken
    once: a process that stopped while another went on would hang the next collective)."""
    if accelerator is None or accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value], from_process=0)[0]


# ---------------------------------------------------------------------------------------------
# Sharded parameters (FSDP2) and whole-state checkpoints


def _fsdp_modules(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextlib.contextmanager
def gathered(model, accelerator=None):
    """Under FSDP2, every parameter gathered for the block (the rollout's forwards call the trunk past
    the root module's hooks, and a decode step per token should not re-gather each layer), sharded
    again after; otherwise nothing. Gathering needs the whole model's memory on every process."""
    modules = _fsdp_modules(model)
    if not modules:
        yield
        return
    plugin = getattr(accelerator.state, "fsdp_plugin", None) if accelerator is not None else None
    reshard = getattr(plugin, "reshard_after_forward", True)
    reshard = reshard if isinstance(reshard, bool) else True
    root, inner = modules[0], modules[1:]  # FSDP never reshards the root after forward
    # FSDP2 finds its root at the first forward, which must go through the root; the rollout's first
    # forward may call the trunk directly, so settle the root first (torch has no public call for
    # this; tests/test_multiprocess.py fails if that changes).
    root._get_fsdp_state()._lazy_init()
    for m in modules:
        m.unshard()
    for m in inner:
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in inner:
            m.set_reshard_after_forward(reshard, recurse=False)
        for m in modules:
            m.reshard()


def full_model_state(model) -> dict:
    """The whole model's state dict by parameter name on the CPU (empty on processes other than the
    main one when distributed). Collective under FSDP: every process must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_optimizer_state(model, optimizer) -> dict:
    """The optimizer's whole state keyed by parameter name (so a checkpoint written by one launch,
    sharded or not, loads into any other), like `full_model_state`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, optimizer, state: dict) -> None:
    """Load a `full_optimizer_state` (every process passes the whole dict) into an optimizer over
    `model`'s parameters, sharding it where the model is sharded."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
