"""Where one PPO update's time goes: lmpref's rollout and `ppo_update` at one GPT-2 shape under
torch.profiler, on CPU. Prints the phase split (lmpref's own timers), the operators by self time and
their shares by kind (matmuls, attention, the vocabulary-sized log-softmax family, ...). Relative
shares only: run it on any machine, `nice` is fine.

    python bench/ppo_profile.py --shape 4x256x4 --batch 16 --micro 8
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_throughput import Q, R, build  # noqa: E402
from reps import parse_shape  # noqa: E402

from lmpref.config import make_config  # noqa: E402
from lmpref.core.accel import PhaseTimer, StaticSampler  # noqa: E402
from lmpref.core.loading import load_tokenizer  # noqa: E402
from lmpref.core.ppo import make_optimizer, ppo_update, rollout  # noqa: E402
from lmpref.core.trunk import plan as trunk_plan  # noqa: E402
from lmpref.records import TaskQuery  # noqa: E402

KINDS = {  # operator name fragments -> kind (first match wins)
    "matmul (blocks, LM head)": ("addmm", "aten::mm", "aten::bmm", "baddbmm", "aten::matmul", "aten::linear"),
    "attention": ("scaled_dot_product", "_flash_attention", "attention"),
    "vocab-sized: log-softmax, softmax, exp, gather": ("softmax", "aten::exp", "gather", "scatter", "entr"),
    "layer norm": ("layer_norm",),
    "gelu / tanh": ("gelu", "tanh"),
    "optimizer (Adam)": ("_foreach", "adam", "addcdiv", "lerp"),
    "sampling (multinomial)": ("multinomial",),
    "cache copies (cat, copy)": ("aten::cat", "aten::copy_", "index_copy", "aten::clone"),
    "elementwise (mul, add, div, sum, ...)": ("aten::mul", "aten::add", "aten::div", "aten::sum", "aten::sub"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="4x256x4")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--fast-sampling", default="off", help="on: the static-cache sampler; off: the trunk sampler")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    device = torch.device("cpu")
    policy, ref, rm, _ = build(parse_shape(args.shape), device)
    tok = load_tokenizer("tiny-gpt2")
    cfg = make_config(
        "test",
        "tiny",
        {
            "ppo.batch_size": args.batch,
            "ppo.micro_batch_size": args.micro,
            "task.query_length": Q,
            "task.response_length": R,
            "task.temperature": 0.7,
            "task.truncate_token": "",
        },
    )
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50000, (args.batch, Q), generator=g).tolist()
    queries = [TaskQuery(id=str(i), text="", ids=x) for i, x in enumerate(ids)]
    opt = make_optimizer([p for p in policy.parameters() if p.requires_grad], cfg.ppo)
    sampler = StaticSampler() if args.fast_sampling == "on" else None
    plan = None if sampler else trunk_plan(policy.lm, ref.lm, rm)

    def do_rollout(timer):
        torch.manual_seed(0)
        return rollout(
            policy, ref, rm, tok, queries, cfg.task, forward_batch=args.batch, device=device, sampler=sampler,
            timer=timer, plan=plan,
        )  # fmt: skip

    def do_train(ro, timer):
        with timer("train"):
            ppo_update(policy, opt, ro, 0.15, cfg.ppo, cfg.task, torch.Generator().manual_seed(0))

    do_train(do_rollout(PhaseTimer(device)), PhaseTimer(device))  # warm-up
    timer = PhaseTimer(device)
    with profile(activities=[ProfilerActivity.CPU]) as prof_rollout:
        ro = do_rollout(timer)
    with profile(activities=[ProfilerActivity.CPU]) as prof_train:
        do_train(ro, timer)
    total = sum(timer.times.values())
    print(f"# shape {args.shape}, batch {args.batch}, micro {args.micro}, threads {torch.get_num_threads()}")
    print("phase shares: " + ", ".join(f"{k} {v / total:.1%} ({v:.2f} s)" for k, v in timer.times.items()))
    for name, prof in (("rollout", prof_rollout), ("train (4 PPO epochs)", prof_train)):
        events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
        self_total = sum(e.self_cpu_time_total for e in events)
        kinds: dict[str, float] = {}
        for e in events:
            kind = next((k for k, frags in KINDS.items() if any(f in e.key for f in frags)), "other")
            kinds[kind] = kinds.get(kind, 0.0) + e.self_cpu_time_total
        print(f"{name}: operator self time by kind")
        for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]):
            print(f"  {v / self_total:6.1%}  {k}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
