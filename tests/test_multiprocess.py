"""Two processes (gloo, CPU) through accelerate's DDP: both ranks end with the same parameters, the
parameters moved, each rank rolled out its own share of the queries, and β is the same everywhere.

The test starts this file twice as a worker (LMPREF_MP_OUT set), with the environment variables
`accelerate launch` / torchrun would set.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

WORLD = 2


def _worker(out: Path) -> None:
    from accelerate import Accelerator

    from lmpref.config import make_config
    from lmpref.models import PolicyWithValue, load_causal_lm, load_tokenizer
    from lmpref.ppo import make_optimizer, train_policy
    from lmpref.tasks import Query

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    tok = load_tokenizer("tiny-gpt2")
    torch.manual_seed(0)
    policy = PolicyWithValue(load_causal_lm("tiny-gpt2"))
    initial = {k: v.clone() for k, v in policy.state_dict().items()}
    ref = PolicyWithValue(load_causal_lm("tiny-gpt2")).eval().requires_grad_(False)
    cfg = make_config("test", "tiny", {"ppo.batch_size": 8, "ppo.minibatches": 2, "ppo.epochs": 2, "ppo.total_episodes": 16,
                                       "ppo.lr": 1e-3, "task.response_length": 6, "task.truncate_after": 2, "task.query_length": 12})
    queries = [Query(id=str(i), text="", ids=tok.encode(f"Story number {i} begins")) for i in range(16)]
    seen = []

    def reward_fn(ids, mask, last):  # (B,)
        seen.extend(ids[:, :12].tolist())
        return ids[:, -1].float() / 50_000

    opt = make_optimizer([p for p in policy.parameters() if p.requires_grad], cfg.ppo)
    ddp_policy, opt = accelerator.prepare(policy, opt)
    state = train_policy(ddp_policy, ref, reward_fn, tok, lambda u, n: queries[(u - 1) * 8 :][:n], cfg.ppo, cfg.task,
                         seed=0, device=accelerator.device, optimizer=opt, accelerator=accelerator)
    torch.save({"params": policy.state_dict(), "initial": initial, "seen": seen, "state": state,
                "ddp": type(ddp_policy).__name__}, out / f"rank{rank}.pt")


def test_two_processes_agree(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in range(WORLD):
        env = {**os.environ, "LMPREF_MP_OUT": str(tmp_path), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD), "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, __file__], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    logs = [p.communicate(timeout=300)[0].decode()[-3000:] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n\n".join(logs)
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
    _worker(Path(os.environ["LMPREF_MP_OUT"]))
