"""Runs are reproducible from a seed: `lmpref run` twice with one seed writes the same samples,
labels, reward model, PPO metrics, policy and evaluation; another seed samples differently."""

import json

import torch
from safetensors.torch import load_file

from lmpref.cli import main

TIMING = ("time/",)  # wall-clock fields are the only ones allowed to differ


def _run(tmp_path, name: str, seed: int):
    run = tmp_path / name
    assert main(["run", "--preset", "test", "--scale", "tiny", "--run-dir", str(run), "--seed", str(seed)]) == 0
    return run


def _eval(run) -> dict:
    """eval.json with the run directory named RUN and each policy's training minutes (wall time) left out."""
    ev = json.loads((run / "eval.json").read_text().replace(str(run), "RUN"))
    for row in ev["by_policy"].values():
        row.pop("minutes")
    return ev


def _metrics(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(TIMING)} for r in rows]


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_one_seed_one_run_another_seed_another(tmp_path):
    a, b = _run(tmp_path, "a", 0), _run(tmp_path, "b", 0)
    for name in ("samples.jsonl", "labels.jsonl"):
        assert (a / name).read_text() == (b / name).read_text(), name
    assert _metrics(a) == _metrics(b) and len(_metrics(a)) == 2
    for sub in ("reward_model", "policy"):
        wa, wb = _weights(a / sub), _weights(b / sub)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{sub}/{key}"
    # eval.json names its own run directory and records the training's wall minutes; all else must agree
    assert _eval(a) == _eval(b) and _eval(a)["by_policy"]["policy"]["episodes"]
    # a different seed really changes the samples (else the checks above could not fail)
    other = tmp_path / "seed1.jsonl"
    assert (
        main(
            [
                "sample",
                "--preset",
                "test",
                "--scale",
                "tiny",
                "--run-dir",
                str(tmp_path / "c"),
                "--seed",
                "1",
                "--out",
                str(other),
            ]
        )
        == 0
    )
    assert (a / "samples.jsonl").read_text() != other.read_text()
