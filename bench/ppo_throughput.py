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

On CPU (and on CUDA with `--reps`) each system runs in a process of its own, alternating
(lmpref, TRL, lmpref-shared, lmpref, TRL, ...), float32 on both sides, at a CPU-sized GPT-2 shape
(`--shape LAYERSxWIDTHxHEADS`, default 12x384x6), every layer trained in both for the like-for-like
rows; TRL runs through bench/trl_peer_cpu.py (the peer script unedited, its CUDA calls made
harmless). The shared-trunk row (lmpref with `ppo.shared_trunk` and only the top `--shared-blocks`
blocks trained) is not like-for-like. It prints each run, then the median per system and the ratio.

    python bench/ppo_throughput.py                       # GPU: 124M and 774M, lmpref then TRL
    python bench/ppo_throughput.py --device cpu          # CPU: 3 alternating reps, see bench/README.md
    python bench/ppo_throughput.py --device cpu --tiny   # CPU check of the harness (< 1 min)
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reps import alternating, parse_shape, shape_name, summarise, table  # noqa: E402

from lmpref.config import make_config
from lmpref.core.accel import enabled
from lmpref.core.loading import load_tokenizer, resolve_model
from lmpref.core.models import PolicyWithValue, freeze_lower_layers
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
CPU_SHAPE, CPU_BATCH, CPU_MICRO, CPU_UPDATES = "12x384x6", 16, 8, 1  # ~12 min for 3 reps on 2 quiet cores (README)
REPO = Path(__file__).resolve().parents[1]
PEER = [REPO / "shared/peer-trl/trl_ppo_throughput.py", REPO.parent / "shared/peer-trl/trl_ppo_throughput.py"]
SYSTEMS = {  # system -> (row label, comparison)
    "lmpref": ("lmpref", "like-for-like (every layer trained)"),
    "trl": ("TRL 1.9.2", "like-for-like (every layer trained)"),
    "lmpref-shared": ("lmpref, shared frozen trunk, top {k} blocks trained", "not like-for-like"),
}


def build(shape: dict, device, trained_blocks: int = -1):
    """Policy (+ value head on its trunk), reference and reward model: random GPT-2 of one shape.
    `trained_blocks` >= 0 trains only the policy's top blocks (embeddings frozen), as the small scales do."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    cfg = GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)
    torch.manual_seed(0)
    policy = PolicyWithValue(GPT2LMHeadModel(cfg)).to(device)
    freeze_lower_layers(policy.lm, trained_blocks)
    ref = copy.deepcopy(policy).eval().requires_grad_(False)
    rcfg = copy.deepcopy(cfg)
    rcfg.num_labels, rcfg.pad_token_id = 1, cfg.eos_token_id
    rm = RewardModel(GPT2ForSequenceClassification(rcfg)).to(device).eval().requires_grad_(False)
    n = sum(p.numel() for name, p in policy.lm.named_parameters() if ".h." in name or "ln_f" in name)  # non-embedding
    return policy, ref, rm, n


def run_lmpref(size: str, args, device, shape: dict | None = None, trained_blocks: int = -1) -> dict:
    tok = load_tokenizer("tiny-gpt2")  # the real GPT-2 BPE (only the model is tiny)
    policy, ref, rm, n_params = build(shape or SIZES[size], device, trained_blocks)
    gpu = device.type == "cuda"
    shared = trained_blocks >= 0
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
            "ppo.fast_sampling": "off" if shared else args.fast_sampling,  # the shared trunk samples itself
            "ppo.fused_adam": args.fused_adam,
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
    stamps, cpu, stats = [], [], []

    def log(s):
        stamps.append(time.perf_counter())  # the timer synchronised CUDA at the end of the update
        cpu.append(time.process_time())
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
    # generation, ref, reward (+ the policy's scoring forward when neither sampler keeps its log-probs)
    fwd_passes = 3 + (0 if enabled(cfg.ppo.fast_sampling, device) or cfg.ppo.shared_trunk else 1)
    flops = n_params * (Q + R) * (2 * fwd_passes + 6 * cfg.ppo.epochs)  # per episode
    peak = next((v for k, v in PEAK_FLOPS.items() if gpu and k in torch.cuda.get_device_name()), None)
    return {
        "system": "lmpref-shared" if shared else "lmpref",
        "size": size,
        "episodes_per_s": eps,
        **phase,
        "peak_mem_gib": (
            torch.cuda.max_memory_allocated() if gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        / 2**30,
        "mfu": eps * flops / peak if peak else float("nan"),
        "cpu_s_per_update": (cpu[-1] - cpu[0]) / (len(cpu) - 1) if len(cpu) > 1 else float("nan"),
        "micro_batch": stats[-1]["ppo/micro_batch"] or (args.micro if args.micro > 0 else args.batch),
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


def load() -> float:
    return os.getloadavg()[0]


def cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "CPU"


def run_child(system: str, args, shape: str) -> dict:
    """One repetition of one system in a process of its own; its last stdout line is its JSON result."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    path = [str(REPO / "src"), *(p for p in [args.trl_site] if p and system == "trl"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    if system == "trl":
        peer = next(p for p in PEER if p.exists())
        tokdir = resolve_model("tiny-gpt2")  # holds vocab.json + merges.txt, the real GPT-2 BPE
        cmd = [sys.executable, str(REPO / "bench/trl_peer_cpu.py"), str(peer), tokdir, shape]
        cmd += [str(args.updates), str(args.batch), str(args.micro), str(args.forward_batch), args.device]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", system, "--shape", shape]
        cmd += ["--device", args.device, "--batch", str(args.batch), "--micro", str(args.micro)]
        cmd += ["--updates", str(args.updates), "--forward-batch", str(args.forward_batch)]
        cmd += ["--shared-blocks", str(args.shared_blocks), "--fast-sampling", args.fast_sampling]
        cmd += ["--compile", args.compile, "--fused-adam", args.fused_adam]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{system} failed (exit {out.returncode}): {' '.join(cmd)}\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["system"] = system
    return res


def trl_available(args) -> bool:
    if not any(p.exists() for p in PEER):
        print("TRL peer script (../shared/peer-trl/trl_ppo_throughput.py) not found: peer skipped")
        return False
    if importlib.util.find_spec("trl") is None and not (args.trl_site and (Path(args.trl_site) / "trl").is_dir()):
        print(f"TRL not importable (nor in --trl-site {args.trl_site or '(none)'}): peer skipped")
        return False
    return True


def run_reps(args, device) -> None:
    """Alternating repetitions, each system in its own process; per-run figures, then the medians."""
    shape = "2x64x2" if args.tiny else (args.shape or CPU_SHAPE)
    dims = parse_shape(shape)
    shared_blocks = min(args.shared_blocks, dims["n_layer"] - 1)
    systems = [] if args.trl_only else ["lmpref"]
    if not args.no_trl and trl_available(args):
        systems.append("trl")
    if not args.trl_only and not args.no_shared and shared_blocks > 0:
        systems.append("lmpref-shared")
    import transformers

    dev = "CPU" if device.type == "cpu" else "CUDA"
    what = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads" if dev == "CPU" else ""
    print(
        f"# {what or torch.cuda.get_device_name()} | torch {torch.__version__} | transformers "
        f"{transformers.__version__} | GPT-2 {shape} (layers x width x heads), vocab 50257 | batch {args.batch}, "
        f"micro-batch {args.micro}, rollout forward batch {args.forward_batch}, Q={Q}, R={R}, 4 epochs, 1 minibatch, "
        f"T=0.7 | {'float32' if dev == 'CPU' else 'bf16 autocast'} | {args.updates} timed update(s) after 1 warm-up "
        f"| {args.reps} alternating rep(s) of {', '.join(systems)} | load average (1 min) at start {load():.2f}",
        flush=True,
    )
    results = []
    t_start = time.perf_counter()
    for rep, system in alternating(systems, args.reps):
        l0, t0 = load(), time.perf_counter()
        r = run_child(system, args, shape)
        r.update(rep=rep, load_start=l0, load_end=load(), wall_s=time.perf_counter() - t0)
        results.append(r)
        phases = " ".join(f"{k} {r[k]:.2f}s" for k in ("generation", "logprobs", "reward", "train") if k in r)
        print(
            f"rep {rep} {system:>13}: {r['episodes_per_s']:.3f} episodes/s | per update: {phases} | process CPU "
            f"{r.get('cpu_s_per_update', float('nan')):.1f} s/update | peak "
            f"{r['peak_mem_gib']:.2f} GiB | process {r['wall_s']:.0f} s | load {l0:.2f} -> {r['load_end']:.2f}",
            flush=True,
        )
    meds = summarise(results)
    rows = []
    for system in systems:
        label, comparison = SYSTEMS[system]
        rows.append(
            {
                "system": system,
                "size": "tiny" if args.tiny else shape,
                "label": label.format(k=shared_blocks),
                "device": dev,
                "comparison": comparison,
                "shape": shape,
                "batch": args.batch,
                "micro": args.micro,
                "micro_batch": args.micro,
                **meds[system],
            }
        )
    print(f"# load average (1 min) at end {load():.2f}; all runs {time.perf_counter() - t_start:.0f} s")
    print(table(rows))
    for r in rows:
        if "ratio" in r and r["system"] != "trl":
            print(f"ratio {r['label']} / TRL ({r['comparison']}): {r['ratio']:.2f}x")
    print(json.dumps(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="a 2-block width-64 GPT-2, batch 8, 1 + 1 updates, 1 rep: a harness check",
    )
    ap.add_argument("--sizes", default="124M,774M", help="GPU sizes (the one-process flow without --reps)")
    ap.add_argument("--shape", default="", help=f"LAYERSxWIDTHxHEADS for --reps (CPU default {CPU_SHAPE})")
    ap.add_argument("--reps", type=int, default=None, help="alternating repetitions (default 3 on CPU)")
    ap.add_argument("--batch", type=int, default=None, help=f"rollout batch (default 512 on CUDA, {CPU_BATCH} on CPU)")
    ap.add_argument(
        "--updates",
        type=int,
        default=None,
        help=f"timed updates per run, after one untimed warm-up update (the peer's convention; default 4 on CUDA, "
        f"{CPU_UPDATES} on CPU)",
    )
    ap.add_argument(
        "--micro",
        type=int,
        default=None,
        help=f"micro-batch (both systems with --reps; default {CPU_MICRO} on CPU); -1 = lmpref's largest that fits",
    )
    ap.add_argument(
        "--forward-batch", type=int, default=0, help="rollout batch per forward (both systems); 0 = the whole batch"
    )
    ap.add_argument("--compile", default="auto", help="on | off | auto: CUDA graphs for the decode step")
    ap.add_argument("--fast-sampling", default="auto", help="on | off | auto")
    ap.add_argument(
        "--fused-adam",
        default=None,
        help="on | off | auto: torch's fused Adam (the same update; default on with --reps, as on CUDA; else auto)",
    )
    ap.add_argument("--shared-blocks", type=int, default=6, help="trained blocks of the shared-trunk row")
    ap.add_argument("--no-shared", action="store_true", help="leave out the shared-trunk row")
    ap.add_argument("--no-trl", action="store_true", help="lmpref only")
    ap.add_argument(
        "--trl-only", action="store_true", help="the TRL peer only (e.g. its long 774M run in a call of its own)"
    )
    ap.add_argument(
        "--trl-site",
        default=os.environ.get("TRL_SITE", "/work/trl-site"),
        help="a pip --target folder holding trl 1.9.2 and its extra wheels, put on the TRL run's PYTHONPATH",
    )
    ap.add_argument("--child", choices=["lmpref", "lmpref-shared"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    device = torch.device(args.device)
    cpu = device.type == "cpu"
    if args.reps is None:
        args.reps = 1 if args.tiny else 3 if cpu else 0
    args.batch = args.batch or (CPU_BATCH if cpu else 512)
    args.updates = args.updates or (CPU_UPDATES if cpu else 4)
    args.micro = args.micro if args.micro is not None else (CPU_MICRO if cpu else -1)
    if args.tiny:
        args.batch, args.updates, args.reps = min(args.batch, 8), min(args.updates, 1), min(args.reps or 1, 1)
    args.fused_adam = args.fused_adam or ("on" if args.reps or args.child else "auto")
    if args.reps or args.child:
        args.micro = min(args.micro, args.batch) if args.micro > 0 else args.micro
        args.forward_batch = args.forward_batch or args.batch
    if args.child:
        shape = parse_shape(args.shape)
        blocks = min(args.shared_blocks, shape["n_layer"] - 1) if args.child == "lmpref-shared" else -1
        print(json.dumps(run_lmpref(shape_name(shape), args, device, shape, blocks)))
        return
    if args.reps:
        run_reps(args, device)
        return
    sizes = ["tiny"] if args.tiny else args.sizes.split(",")
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
