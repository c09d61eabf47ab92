"""PPO throughput on the paper's style-task shape: lmpref's `train_policy`, and TRL 1.9.2's PPOTrainer
through the peer script, in one invocation; prints episodes/s, the time per phase, peak memory, MFU
and the ratio lmpref / TRL.

Workload (issue #7, the same as ../shared/peer-trl/trl_ppo_throughput.py): random-init GPT-2 shapes
(throughput does not depend on the weights) with the real GPT-2 BPE, 64-token queries of random ids,
fixed 24-token responses (no truncation, as the peer's stop_token=None), T=0.7, rollout batch 512,
1 minibatch, 4 PPO epochs, bf16 autocast with float32 master weights, dropout off (TRL turns it off too).
Episodes/s is timed over the updates after the first (the peer's convention: compilation and
warm-up land in update 1).

MFU convention: N = non-embedding parameters (Kaplan et al. 2020; the LM-head matmul and the
attention scores are not counted, so this is a lower bound). Per episode of Q+R tokens, each
forward-only pass costs 2·N·(Q+R) and each training pass 6·N·(Q+R). lmpref's passes: generation,
reference, reward (+ the policy's scoring forward when fast sampling is off), and `epochs` training
passes of the policy (the value head shares its trunk). Peak: H100 bf16 dense 989 TFLOP/s.

    python bench/ppo_throughput.py                       # GPU: 124M and 774M, lmpref then TRL
    python bench/ppo_throughput.py --device cpu --tiny   # CPU check of the harness (< 1 min)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from lmpref.config import make_config
from lmpref.core.accel import enabled
from lmpref.core.loading import load_tokenizer, resolve_model
from lmpref.core.models import PolicyWithValue
from lmpref.core.ppo import train_policy
from lmpref.core.reward import RewardModel
from lmpref.records import TaskQuery

SIZES = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=2),
    "124M": dict(n_layer=12, n_embd=768, n_head=12),
    "774M": dict(n_layer=36, n_embd=1280, n_head=20),
}
PEER_MICRO = {"124M": (64, 128), "774M": (16, 64)}  # the peer's micro-batch / rollout forward batch (its README)
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}
Q, R = 64, 24
REPO = Path(__file__).resolve().parents[1]
PEER = [REPO / "shared/peer-trl/trl_ppo_throughput.py", REPO.parent / "shared/peer-trl/trl_ppo_throughput.py"]


def build(size: str, device):
    """Policy (+ value head on its trunk), reference and reward model: random GPT-2 of one shape."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    cfg = GPT2Config(**SIZES[size], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)
    torch.manual_seed(0)
    policy = PolicyWithValue(GPT2LMHeadModel(cfg)).to(device)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    rcfg = copy.deepcopy(cfg)
    rcfg.num_labels, rcfg.pad_token_id = 1, cfg.eos_token_id
    rm = RewardModel(GPT2ForSequenceClassification(rcfg)).to(device).eval().requires_grad_(False)
    n = sum(p.numel() for name, p in policy.lm.named_parameters() if ".h." in name or "ln_f" in name)  # non-embedding
    return policy, ref, rm, n


def run_lmpref(size: str, args, device) -> dict:
    tok = load_tokenizer("tiny-gpt2")  # the real GPT-2 BPE (only the model is tiny)
    policy, ref, rm, n_params = build(size, device)
    gpu = device.type == "cuda"
    cfg = make_config(
        "test",
        "tiny",
        {
            "ppo.batch_size": args.batch,
            "ppo.minibatches": 1,
            "ppo.epochs": 4,
            "ppo.total_episodes": args.batch * (args.updates + 1),
            "ppo.lr": 1e-5,
            "ppo.kl_coef": 0.15,
            "ppo.micro_batch_size": args.micro,
            "ppo.mixed_precision": "bf16" if gpu else "no",
            "ppo.compile": args.compile,
            "ppo.fast_sampling": args.fast_sampling,
            "ppo.checkpoint_every": 10**9,
            "task.query_length": Q,
            "task.response_length": R,
            "task.temperature": 0.7,
            "task.truncate_token": "",
            "task.truncate_after": 0,
        },
    )
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50000, (args.batch * (args.updates + 1), Q), generator=g).tolist()
    queries = [TaskQuery(id=str(i), text="", ids=x) for i, x in enumerate(ids)]
    stamps, stats = [], []

    def log(s):
        stamps.append(time.perf_counter())  # the timer synchronised CUDA at the end of the update
        stats.append(s)

    if gpu:
        torch.cuda.reset_peak_memory_stats()
    train_policy(
        policy,
        ref,
        rm,
        tok,
        lambda u, k: queries[(u - 1) * k : u * k],
        cfg.ppo,
        cfg.task,
        seed=0,
        device=device,
        log=log,
        forward_batch=args.forward_batch or args.batch,
    )
    timed = stats[1:] or stats
    eps = (
        args.batch * (len(stamps) - 1) / (stamps[-1] - stamps[0])
        if len(stamps) > 1
        else args.batch / sum(stats[0][k] for k in ("time/rollout", "time/train"))
    )
    phase = {k: sum(s[f"time/{k}"] for s in timed) / len(timed) for k in ("generation", "logprobs", "reward", "train")}
    fwd_passes = 3 + (0 if enabled(cfg.ppo.fast_sampling, device) else 1)  # generation, ref, reward (+ policy scoring)
    flops = n_params * (Q + R) * (2 * fwd_passes + 6 * cfg.ppo.epochs)  # per episode
    peak = next((v for k, v in PEAK_FLOPS.items() if gpu and k in torch.cuda.get_device_name()), None)
    return {
        "system": "lmpref",
        "size": size,
        "episodes_per_s": eps,
        **phase,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if gpu else float("nan"),
        "mfu": eps * flops / peak if peak else float("nan"),
        "micro_batch": stats[-1]["ppo/micro_batch"] or args.batch,
        "non_embedding_params": n_params,
    }


def run_trl(size: str, args) -> dict | None:
    if importlib.util.find_spec("trl") is None:
        print("TRL not installed: peer skipped")
        return None
    peer = next((p for p in PEER if p.exists()), None)
    if peer is None or size not in PEER_MICRO:
        print(f"TRL peer script not found or no peer shape for {size}: peer skipped")
        return None
    micro, fwd = PEER_MICRO[size]
    tokdir = resolve_model("tiny-gpt2")  # holds vocab.json + merges.txt, the real GPT-2 BPE
    cmd = [sys.executable, str(peer), tokdir, size, str(args.updates), str(args.batch), str(micro), str(fwd)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        print(f"TRL peer failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
        return None
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return {
        "system": "trl-1.9.2",
        "size": size,
        "episodes_per_s": res["episodes_per_s"],
        "peak_mem_gib": res["peak_mem_gib"],
        "micro_batch": micro,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--tiny", action="store_true", help="a 2-block width-64 GPT-2, batch 8, 1 + 1 updates: a harness check"
    )
    ap.add_argument("--sizes", default="124M,774M")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument(
        "--updates",
        type=int,
        default=4,
        help="timed updates per system, after one untimed warm-up update (the peer's convention)",
    )
    ap.add_argument("--micro", type=int, default=-1, help="lmpref micro-batch; -1 = the largest that fits in memory")
    ap.add_argument(
        "--forward-batch", type=int, default=0, help="lmpref rollout batch per forward; 0 = the whole batch"
    )
    ap.add_argument("--compile", default="auto", help="on | off | auto: CUDA graphs for the decode step")
    ap.add_argument("--fast-sampling", default="auto", help="on | off | auto")
    ap.add_argument("--no-trl", action="store_true", help="lmpref only")
    ap.add_argument(
        "--trl-only", action="store_true", help="the TRL peer only (e.g. its long 774M run in a call of its own)"
    )
    args = ap.parse_args()
    device = torch.device(args.device)
    sizes = ["tiny"] if args.tiny else args.sizes.split(",")
    if args.tiny:
        args.batch, args.updates = min(args.batch, 8), min(args.updates, 1)
    import transformers

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"# {name} | torch {torch.__version__} | transformers {transformers.__version__} | batch {args.batch}, Q={Q}, "
        f"R={R}, "
        f"4 epochs, 1 minibatch, T=0.7, {'bf16 autocast' if device.type == 'cuda' else 'float32'}"
    )
    rows = []
    for size in sizes:
        if not args.trl_only:
            rows.append(run_lmpref(size, args, device))
        if device.type == "cuda" and not args.no_trl:
            trl = run_trl(size, args)
            if trl:
                rows.append(trl)
        elif not args.no_trl:
            print(
                "TRL peer needs CUDA: peer skipped"
                if importlib.util.find_spec("trl")
                else "TRL not installed: peer skipped"
            )
    cols = [
        "system",
        "size",
        "episodes_per_s",
        "generation",
        "logprobs",
        "reward",
        "train",
        "peak_mem_gib",
        "mfu",
        "micro_batch",
    ]
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    print(
        "| "
        + " | ".join(
            c if c in ("system", "size") else c.replace("_", " ") + (" s/update" if c in cols[3:7] else "")
            for c in cols
        )
        + " |"
    )
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |")
    for size in sizes:
        ours = next((r for r in rows if r["size"] == size and r["system"] == "lmpref"), None)
        peer = next((r for r in rows if r["size"] == size and r["system"] != "lmpref"), None)
        if ours and peer:
            print(f"ratio {size}: lmpref / TRL = {ours['episodes_per_s'] / peer['episodes_per_s']:.2f}x")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
