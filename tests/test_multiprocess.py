"""Two processes (gloo, CPU) through accelerate, the way `accelerate launch` starts them.

- DDP, `train_policy` directly: both ranks end with the same parameters, the parameters moved, each
  rank rolled out its own share of the queries, and β is the same everywhere.
- DDP and FSDP2 through the real `step_train_policy`, the FSDP2 run stopped after one update and
  resumed from its checkpoint: both end with the same policy, so sharding, gathering for the rollout,
  whole-state checkpoints and resuming change no number.

accelerate turns FSDP on only when there is an accelerator; on CPU the FSDP2 worker puts accelerate's
shared state where `accelerate launch --use_fsdp --fsdp_version 2` puts it on GPUs, so the pipeline's
own `Accelerator()` prepares the model through accelerate's real FSDP2 path (`fully_shard`).

The tests start this file twice as a worker (LMPREF_MP_OUT set), with the environment variables
`accelerate launch` / torchrun would set.
"""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

WORLD = 2


def _worker(out: Path) -> None:
    from accelerate import Accelerator

    from lmpref.config import make_config
    from lmpref.core.loading import load_causal_lm, load_tokenizer
    from lmpref.core.models import PolicyWithValue
    from lmpref.core.ppo import make_optimizer, train_policy
    from lmpref.records import TaskQuery

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    tok = load_tokenizer("tiny-gpt2")
    torch.manual_seed(0)
    policy = PolicyWithValue(load_causal_lm("tiny-gpt2"))
    initial = {k: v.clone() for k, v in policy.state_dict().items()}
    ref = PolicyWithValue(load_causal_lm("tiny-gpt2")).eval().requires_grad_(False)
    cfg = make_config(
        "test",
        "tiny",
        {
            "ppo.batch_size": 8,
            "ppo.minibatches": 2,
            "ppo.epochs": 2,
            "ppo.total_episodes": 16,
            "ppo.lr": 1e-3,
            "task.response_length": 6,
            "task.truncate_after": 2,
            "task.query_length": 12,
        },
    )
    queries = [TaskQuery(id=str(i), text="", ids=tok.encode(f"Story number {i} begins")) for i in range(16)]
    seen = []

    def reward_fn(ids, mask, last):  # (B,)
        seen.extend(ids[:, :12].tolist())
        return ids[:, -1].float() / 50_000

    opt = make_optimizer([p for p in policy.parameters() if p.requires_grad], cfg.ppo)
    ddp_policy, opt = accelerator.prepare(policy, opt)
    state = train_policy(
        ddp_policy,
        ref,
        reward_fn,
        tok,
        lambda u, n: queries[(u - 1) * 8 :][:n],
        cfg.ppo,
        cfg.task,
        seed=0,
        device=accelerator.device,
        optimizer=opt,
        accelerator=accelerator,
    )
    torch.save(
        {
            "params": policy.state_dict(),
            "initial": initial,
            "seen": seen,
            "state": state,
            "ddp": type(ddp_policy).__name__,
        },
        out / f"rank{rank}.pt",
    )


PIPELINE = {
    "ppo.total_episodes": 48,
    "ppo.batch_size": 16,
    "ppo.minibatches": 2,
    "ppo.epochs": 2,
    "ppo.lr": 1e-3,
    "ppo.checkpoint_every": 1,
    "model.trainable_layers": 1,
}  # block 0 and the embeddings frozen, as the CPU scales do


def _fsdp2_on_cpu():
    """Put accelerate's shared state where `accelerate launch --use_fsdp --fsdp_version 2` puts it."""
    from accelerate import Accelerator, FullyShardedDataParallelPlugin
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    # no block class named: PolicyWithValue passes on the LM's own (GPT2Block)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap")
    Accelerator(cpu=True)
    PartialState._shared_state["distributed_type"] = AcceleratorState._shared_state["distributed_type"] = (
        DistributedType.FSDP
    )
    AcceleratorState._shared_state["fsdp_plugin"] = plugin


def _pipeline_worker(out: Path, mode: str) -> None:
    """`step_train_policy` as `lmpref train-policy` runs it; under FSDP2 stopped after update 1 (the
    Andon cord, read on the main process only) and resumed."""
    import lmpref.core.ppo
    from lmpref.config import make_config
    from lmpref.steps.train import step_train_policy

    torch.set_num_threads(1)
    if mode == "fsdp":
        _fsdp2_on_cpu()
    seen, train_policy = {}, lmpref.core.ppo.train_policy

    def spy(policy, *args, **kwargs):
        from torch.distributed.fsdp import FSDPModule

        seen.setdefault("wrapper", type(policy).__name__)
        seen.setdefault("param", type(next(policy.parameters())).__name__)
        seen.setdefault("sharded", sorted({type(m).__name__ for m in policy.modules() if isinstance(m, FSDPModule)}))
        return train_policy(policy, *args, **kwargs)

    lmpref.core.ppo.train_policy = spy
    # FSDP2 samples with the static-cache sampler (it calls the trunk directly; DDP's HF generate draws the same tokens)
    cfg = make_config("test", "tiny", {**PIPELINE, "ppo.fast_sampling": "on" if mode == "fsdp" else "off"})
    run_dir, rm = out / f"run-{mode}", out / "rm"
    if mode == "fsdp":
        first = step_train_policy(
            cfg, rm, run_dir, should_stop=lambda: "test stop" if (run_dir / "checkpoints" / "latest").exists() else None
        )
        seen["first"] = first
        seen["resumed"] = step_train_policy(cfg, rm, run_dir, resume=True)
    else:
        seen["resumed"] = step_train_policy(cfg, rm, run_dir)
    for key in ("first", "resumed"):
        if key in seen:
            seen[key].pop("train_seconds")  # wall time: the only field two launches may disagree on
    torch.save(seen, out / f"{mode}-rank{int(os.environ['RANK'])}.pt")


def _launch(tmp_path: Path, mode: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(WORLD):
        env = {
            **os.environ,
            "LMPREF_MP_OUT": str(tmp_path),
            "LMPREF_MP_MODE": mode,
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "OMP_NUM_THREADS": "1",
            "ACCELERATE_USE_CPU": "true",
        }
        procs.append(
            subprocess.Popen([sys.executable, __file__], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        )
    logs = [p.communicate(timeout=600)[0].decode()[-3000:] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n\n".join(logs)


def test_ddp_and_fsdp2_with_a_resume_train_the_same_policy(tmp_path):
    from safetensors.torch import load_file

    from lmpref.core.loading import load_tokenizer
    from lmpref.core.reward import RewardModel

    torch.manual_seed(0)
    RewardModel.from_lm("tiny-gpt2").save(tmp_path / "rm")
    load_tokenizer("tiny-gpt2").save_pretrained(tmp_path / "rm")
    _launch(tmp_path, "ddp")
    _launch(tmp_path, "fsdp")
    ddp, fsdp = torch.load(tmp_path / "ddp-rank0.pt"), torch.load(tmp_path / "fsdp-rank0.pt")
    assert (ddp["wrapper"], ddp["param"]) == ("DistributedDataParallel", "Parameter")
    assert (fsdp["wrapper"], fsdp["param"]) == ("FSDPPolicyWithValue", "DTensor")  # sharded in place by fully_shard
    assert fsdp["sharded"] == ["FSDPGPT2Block", "FSDPPolicyWithValue"]  # block by block, the rest at the root
    assert fsdp["first"] == {"update": 1, "kl_coef": fsdp["first"]["kl_coef"], "stopped": "test stop"}
    assert ddp["resumed"] == fsdp["resumed"] and ddp["resumed"]["update"] == 3  # same β after the same KLs
    assert torch.load(tmp_path / "fsdp-rank1.pt")["resumed"] == fsdp["resumed"]
    # the checkpoint's optimizer state is keyed by parameter name, whole (not one rank's shard)
    moments = torch.load(tmp_path / "run-fsdp" / "checkpoints" / "update-000003" / "optimizer.pt")
    assert moments["state"]["value_head.weight"]["exp_avg"].shape == (1, 64)
    a, b = (load_file(str(tmp_path / f"run-{m}" / "policy" / "model.safetensors")) for m in ("ddp", "fsdp"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"DDP and FSDP2 disagree on {k}")
    initial = load_file(str(tmp_path / "rm" / "model.safetensors"))
    moved = [k for k in a if k in initial and not torch.allclose(a[k], initial[k])]
    assert any(".h.1." in k for k in moved) and not any(".h.0." in k or "wte" in k for k in moved), (
        moved
    )  # frozen stays frozen
    heads = [
        load_file(str(tmp_path / f"run-{m}" / "policy" / "value_head.safetensors"))["weight"] for m in ("ddp", "fsdp")
    ]
    torch.testing.assert_close(heads[1], heads[0], rtol=1e-4, atol=1e-5)
    # the FSDP2 checkpoint of update 2 resumes in one plain process (one format for every launch)
    from lmpref.config import make_config
    from lmpref.steps.train import step_train_policy

    one = tmp_path / "run-one"
    shutil.copytree(tmp_path / "run-fsdp" / "checkpoints", one / "checkpoints")
    (one / "checkpoints" / "latest").write_text("update-000002")
    state = step_train_policy(make_config("test", "tiny", PIPELINE), tmp_path / "rm", one, resume=True)
    assert state["update"] == 3 and (one / "policy" / "model.safetensors").exists()


def test_the_documented_cpu_launch_trains_as_one_job(tmp_path):
    """docs/multi-gpu.md's CPU line, `ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m lmpref.cli
    train-policy ...`, exactly. Without the variable accelerate sees one process in each of the two,
    and the command refuses with the fix instead of training twice into the same files."""
    import json

    from lmpref.core.loading import load_tokenizer
    from lmpref.core.reward import RewardModel

    torch.manual_seed(0)
    RewardModel.from_lm("tiny-gpt2").save(tmp_path / "rm")
    load_tokenizer("tiny-gpt2").save_pretrained(tmp_path / "rm")

    def launch(run_dir: Path, **env):
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "lmpref.cli",
            "train-policy",
            "--preset",
            "test",
            "--scale",
            "tiny",
            "--reward-model",
            str(tmp_path / "rm"),
            "--run-dir",
            str(run_dir),
            "--set",
            "ppo.total_episodes=32",
            "--set",
            "ppo.batch_size=16",
            "--set",
            "ppo.minibatches=2",
        ]
        base = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
        return subprocess.run(
            cmd, env={**base, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True, timeout=600
        )

    ok = launch(tmp_path / "run", ACCELERATE_USE_CPU="true")
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-3000:]
    assert ok.stdout.count("saved the policy") == 1  # one job: the main process reports
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and (tmp_path / "run" / "policy" / "model.safetensors").exists()
    bad = launch(tmp_path / "bad")
    assert bad.returncode != 0 and "started as one of 2 processes, but accelerate sees 1" in bad.stderr
    assert "ACCELERATE_USE_CPU=true" in bad.stderr and not (tmp_path / "bad" / "checkpoints").exists()


@pytest.mark.parametrize(
    "launch, fix",
    [
        (dict(distributed_type="FSDP", is_fsdp2=False, zero_stage=None), "fsdp_version 2"),
        (dict(distributed_type="DEEPSPEED", is_fsdp2=False, zero_stage=3), "ZeRO stage 1 or 2"),
    ],
)
def test_unsupported_launches_are_refused_with_the_fix(launch, fix):
    from accelerate.utils import DistributedType

    from lmpref.config import ConfigError
    from lmpref.steps.launch import check_supported

    acc = SimpleNamespace(
        distributed_type=DistributedType[launch["distributed_type"]],
        is_fsdp2=launch["is_fsdp2"],
        state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=launch["zero_stage"])),
    )
    with pytest.raises(ConfigError, match=fix):  # the CLI prints it as `lmpref: error: ...`
        check_supported(acc)
    for fine in (
        dict(
            distributed_type=DistributedType.DEEPSPEED,
            is_fsdp2=False,
            state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2)),
        ),
        dict(distributed_type=DistributedType.FSDP, is_fsdp2=True, state=SimpleNamespace()),
        dict(distributed_type=DistributedType.MULTI_GPU, is_fsdp2=False, state=SimpleNamespace()),
    ):
        check_supported(SimpleNamespace(**fine))


def test_two_processes_agree(tmp_path):
    _launch(tmp_path, "train_policy")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD))
    assert r0["ddp"] == "DistributedDataParallel"
    for k, v in r0["params"].items():
        assert torch.equal(v, r1["params"][k]), f"ranks disagree on {k}"
    moved = [k for k, v in r0["params"].items() if not torch.equal(v, r0["initial"][k])]
    assert "value_head.weight" in moved and any("h.1." in k for k in moved), moved
    # each rank saw its own half of every update's queries (rank::world), 2 updates x 4 episodes
    assert len(r0["seen"]) == len(r1["seen"]) == 8 and not set(map(tuple, r0["seen"])) & set(map(tuple, r1["seen"]))
    assert r0["state"] == r1["state"] and r0["state"]["update"] == 2  # β from the KL averaged over ranks


if __name__ == "__main__" and os.environ.get("LMPREF_MP_OUT"):
    if os.environ["LMPREF_MP_MODE"] == "train_policy":
        _worker(Path(os.environ["LMPREF_MP_OUT"]))
    else:
        _pipeline_worker(Path(os.environ["LMPREF_MP_OUT"]), os.environ["LMPREF_MP_MODE"])
