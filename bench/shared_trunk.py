"""The shared frozen trunk, on and off, on the main job's own PPO workload.

Runs lmpref's `train_policy` with `--preset sentiment --scale small` (bundled SmolLM2-135M, top 6 of
30 blocks trained, 32-token queries, 24-token responses, rollout batch 32, 4 minibatches, 4 epochs,
the preset's prompted reward model with its untrained prior head) for a few updates with
`ppo.shared_trunk` on, then off, in one process, and prints episodes/s, the seconds per update of
each phase (generation, log-probs, reward, training) and the ratio. The first update of each side
is a warm-up and is not counted. Timings are only honest on a quiet machine: say the load (`uptime`).

    python bench/shared_trunk.py                 # 3 timed updates per side
    python bench/shared_trunk.py --updates 1 --model tiny-gpt2   # harness check
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from lmpref.config import make_config
from lmpref.core.loading import load_causal_lm, load_tokenizer
from lmpref.core.models import PolicyWithValue, freeze_lower_layers
from lmpref.core.ppo import train_policy
from lmpref.core.reward import new_reward_model
from lmpref.core.runtime import load_reference, setup
from lmpref.tasks import make_query_source


def run(shared: bool, updates: int, model: str) -> dict:
    over = {"ppo.shared_trunk": shared, "model.name": model}
    cfg = make_config("sentiment", "small", over)
    cfg.ppo.total_episodes = cfg.ppo.batch_size * (updates + 1)
    cfg.ppo.checkpoint_every = 10**6
    device = setup(cfg)
    tok = load_tokenizer(cfg.model.name, cfg.model.cache_dir)
    policy = PolicyWithValue(load_causal_lm(cfg.model.name, cfg.model.cache_dir)).to(device)
    freeze_lower_layers(policy.lm, cfg.model.trainable_layers)
    ref = load_reference(cfg, device)
    rm = new_reward_model(cfg, cfg.model.name, tok, device).eval()
    rm.requires_grad_(False)
    source = make_query_source(tok, cfg.task, "train")
    rows: list[dict] = []
    marks: list[float] = []
    train_policy(
        policy,
        ref,
        rm,
        tok,
        lambda u, n: source.sample(n, f"bench-{u}"),
        cfg.ppo,
        cfg.task,
        seed=0,
        device=device,
        log=lambda r: (rows.append(r), marks.append(time.perf_counter())),
        forward_batch=cfg.sample.batch_size,
    )
    timed = rows[1:]
    wall = marks[-1] - marks[0]
    phases = {k.removeprefix("time/"): sum(r[k] for r in timed) / len(timed) for k in timed[0] if k.startswith("time/")}
    return {
        "shared_trunk": shared,
        "model": model,
        "updates": len(timed),
        "batch": cfg.ppo.batch_size,
        "epochs": cfg.ppo.epochs,
        "episodes_per_s": len(timed) * cfg.ppo.batch_size / wall,
        "s_per_update": phases,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--updates", type=int, default=3, help="timed updates per side (after one warm-up)")
    ap.add_argument("--model", default="smollm2-135m")
    args = ap.parse_args()
    torch.set_num_threads(2)
    rows = [run(True, args.updates, args.model), run(False, args.updates, args.model)]
    print("| shared trunk | episodes/s | generation s | log-probs s | reward s | train s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        p = r["s_per_update"]
        print(
            f"| {'on' if r['shared_trunk'] else 'off'} | {r['episodes_per_s']:.2f} | {p.get('generation', 0):.1f} | "
            f"{p.get('logprobs', 0):.1f} | {p.get('reward', 0):.1f} | {p.get('train', 0):.1f} |"
        )
    print(f"speed-up (on / off): {rows[0]['episodes_per_s'] / rows[1]['episodes_per_s']:.2f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
