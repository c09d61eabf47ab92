"""Run the TRL peer script (../shared/peer-trl/trl_ppo_throughput.py, TRL 1.9.2's PPOTrainer) on any
GPT-2 shape and on CPU, without editing it: import it as a module, then

  - add the shape to its SIZES (its own are 124M and 774M only);
  - on CPU, hand it a `torch` whose `cuda.synchronize` is a no-op, `cuda.max_memory_allocated` the
    process's peak RSS and `cuda.get_device_name` 'cpu' (the peer calls these three; nothing else in
    TRL sees the stand-in), and give its PPOConfig bf16=False and use_cpu=True: float32 on both
    sides, as lmpref runs on CPU (on CUDA the peer's bf16 autocast is kept, as lmpref's is);
  - time TRL's rollout phases by wrapping the functions its `train` calls for them (module
    globals of trl.experimental.ppo.ppo_trainer), which changes nothing they compute:
    generation = `batch_generation`; log-probs = the no-grad `forward` of ρ, the value model's
    `get_reward` and the `selective_log_softmax` of the rollout; reward = the reward model's
    `get_reward`; train = the rest of the update (GAE, the PPO epochs, logging).

Then the peer's own `main` runs as it is and its JSON line is printed with the phase split added
(seconds per timed update, the peer's convention: the updates after the first) and its episodes/s
unrounded (the peer rounds to 0.01, coarse at CPU rates; same formula, same clock).

usage: python bench/trl_peer_cpu.py PEER TOKDIR SHAPE UPDATES BATCH MICRO FWD [cpu|cuda]
       SHAPE as LAYERSxWIDTHxHEADS, e.g. 12x384x6
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reps import PHASES, parse_shape  # noqa: E402

_times = dict.fromkeys(PHASES[:3], 0.0)  # generation, logprobs, reward: seconds so far
_reward_models: list = []  # the trainer's reward model (to tell its get_reward from the value model's)
_snapshots: list[dict] = []  # _times at each update's end
_stamps: list[list[float]] = []  # the peer's own list of update-end times (its Clock's `t`)


def _peak_rss_bytes(*args, **kwargs) -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class _CpuCuda:
    """torch.cuda for the peer on CPU: the three calls it makes, harmless."""

    synchronize = staticmethod(lambda *a, **k: None)
    max_memory_allocated = staticmethod(_peak_rss_bytes)
    get_device_name = staticmethod(lambda *a, **k: "cpu")

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


class _CpuTorch:
    cuda = _CpuCuda()

    def __getattr__(self, name):
        return getattr(torch, name)


def _timed(fn, phase_of):
    def wrapper(*args, **kwargs):
        phase = phase_of(*args)
        if phase is None:
            return fn(*args, **kwargs)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _times[phase] += time.perf_counter() - t0

    return wrapper


def _instrument(peer) -> None:
    import trl.experimental.ppo.ppo_trainer as pt

    rollout = lambda: not torch.is_grad_enabled()  # noqa: E731  (the PPO epochs run with grad)
    pt.batch_generation = _timed(pt.batch_generation, lambda *a: "generation")
    pt.forward = _timed(pt.forward, lambda *a: "logprobs" if rollout() else None)
    pt.selective_log_softmax = _timed(pt.selective_log_softmax, lambda *a: "logprobs" if rollout() else None)
    pt.get_reward = _timed(
        pt.get_reward, lambda model, *a: "reward" if any(model is m for m in _reward_models) else "logprobs"
    )

    class PPOTrainer(peer.PPOTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            _reward_models.append(self.reward_model)

    class Clock(peer.Clock):
        def __init__(self):
            super().__init__()
            _stamps.append(self.t)

        def on_step_end(self, *args, **kwargs):
            super().on_step_end(*args, **kwargs)
            _snapshots.append({**_times, "cpu": time.process_time()})

    peer.PPOTrainer, peer.Clock = PPOTrainer, Clock


def phase_split(stamps: list[float], snapshots: list[dict]) -> dict[str, float]:
    """Seconds per timed update (each update after the first) of each phase; train = the rest."""
    out = dict.fromkeys(PHASES, 0.0)
    n = len(stamps) - 1
    for i in range(1, len(stamps)):
        spent = {k: snapshots[i][k] - snapshots[i - 1][k] for k in PHASES[:3]}
        for k, v in spent.items():
            out[k] += v / n
        out["train"] += (stamps[i] - stamps[i - 1] - sum(spent.values())) / n
    return out


def main(argv: list[str]) -> None:
    peer_path, tokdir, shape, updates, batch, micro, fwd = argv[:7]
    device = argv[7] if len(argv) > 7 else "cpu"
    spec = importlib.util.spec_from_file_location("trl_peer", peer_path)
    assert spec and spec.loader
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    dims = parse_shape(shape)
    peer.SIZES[shape] = {"n_embd": dims["n_embd"], "n_layer": dims["n_layer"], "n_head": dims["n_head"]}
    if device == "cpu":
        peer.torch = _CpuTorch()
        config = peer.PPOConfig
        peer.PPOConfig = lambda **kw: config(**{**kw, "bf16": False, "fp16": False, "use_cpu": True})
    _instrument(peer)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        peer.main(tokdir, shape, int(updates), int(batch), int(micro), int(fwd))
    res = json.loads(buf.getvalue().strip().splitlines()[-1])
    t = _stamps[0]
    res["episodes_per_s"] = int(batch) * (len(t) - 1) / (t[-1] - t[0])  # the peer's formula, before its rounding
    res.update(phase_split(t, _snapshots))
    res["cpu_s_per_update"] = (_snapshots[-1]["cpu"] - _snapshots[0]["cpu"]) / (len(t) - 1)  # all threads
    res["precision"] = "float32" if device == "cpu" else "bf16 autocast"
    print(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv[1:])
