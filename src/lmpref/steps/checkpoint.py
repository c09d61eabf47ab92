"""The run directory's checkpoint format: `checkpoints/update-N/` holds the policy, its optimizer
state and the loop's state, written whole (a temporary directory renamed into place). A policy with
LoRA adapters is saved as `save_policy` lays it out: merged weights, the adapter in `adapter/`.
A trained policy's folder also says what its training cost (`lmpref_policy.json`, `write_policy_meta`)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch

from lmpref.core import lora
from lmpref.core.accel import full_model_state, full_optimizer_state
from lmpref.core.models import PolicyWithValue
from lmpref.io import atomic_dir, atomic_write_text, read_json_object


def checkpoint_fn(run_dir: Path, policy, tok, is_main: bool):
    """Called on every process (a sharded model's state is gathered collectively); writes on the main
    one. The optimizer state is keyed by parameter name, so any launch can resume any checkpoint."""
    ckpts = run_dir / "checkpoints"

    def save(update: int, state: dict, optimizer) -> None:
        weights, moments = full_model_state(policy), full_optimizer_state(policy, optimizer)
        if not is_main:
            return
        final = ckpts / f"update-{update:06d}"
        with atomic_dir(final) as tmp:
            save_policy(weights, tmp, like=unwrapped(policy))
            tok.save_pretrained(tmp)
            with open(tmp / "optimizer.pt", "wb") as f:  # through Python's I/O: a full disk is an OSError
                torch.save(moments, f)
            atomic_write_text(tmp / "state.json", json.dumps(state))
        atomic_write_text(ckpts / "latest", final.name)  # the pointer moves only once the checkpoint is whole
        for old in sorted(ckpts.glob("update-*"))[:-2]:  # keep the last two
            shutil.rmtree(old, ignore_errors=True)

    return save


def save_policy(state: dict, path: Path, *, like: PolicyWithValue) -> None:
    """A policy's whole state dict into the folder `path`: a transformers causal LM + value_head.safetensors
    (`PolicyWithValue.save_state`). With LoRA (`like.peft`) the LM is saved merged (base + adapters, plain
    transformers loads it) and the adapter alone in `path/adapter/` (plain peft loads it on the base);
    a resumed run puts that adapter back on the base model, so ρ stays the base exactly."""
    if like.peft is None:
        PolicyWithValue.save_state(state, path, like=like)
        return
    lm_state = {k.removeprefix("lm."): v for k, v in state.items() if k.startswith("lm.")}
    merged = {f"lm.{k}": v for k, v in lora.merged_state(like.lm, lm_state).items()}
    PolicyWithValue.save_state(merged | {k: v for k, v in state.items() if not k.startswith("lm.")}, path, like=like)
    lora.save_adapter(like.peft, lm_state, path / lora.ADAPTER_DIR)


def unwrapped(model):
    """The PolicyWithValue inside a DDP wrapper (FSDP2 shards in place and wraps nothing)."""
    return getattr(model, "module", model)


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if pointer.exists():
        path = run_dir / "checkpoints" / pointer.read_text().strip()
        if (path / "state.json").exists():
            return path
    return None


# ---------------------------------------------------------------------------------------------
# What a trained policy cost: labels, episodes, wall minutes

POLICY_META = "lmpref_policy.json"


class TrainClock:
    """Wall seconds of a training step, carried in the trainer's state as `train_seconds` (written
    with every checkpoint by `wrap`), so a run resumed from a checkpoint adds to what it had spent."""

    def __init__(self) -> None:
        self.before, self.t0 = 0.0, time.monotonic()

    def resume(self, state: dict | None) -> None:
        self.before = float((state or {}).get("train_seconds", 0.0))

    def seconds(self) -> float:
        return self.before + time.monotonic() - self.t0

    def wrap(self, checkpoint):
        def save(update: int, state: dict, optimizer) -> None:
            state["train_seconds"] = self.seconds()
            checkpoint(update, state, optimizer)

        return save


def write_policy_meta(
    folder: Path, *, algo: str, labels: int | None, episodes: int, seconds: float, counts: str
) -> None:
    """`folder/lmpref_policy.json`: the labels the policy learned from (trained on, held-out ones not
    counted), its training episodes (`counts` says what one is for this algorithm) and the wall
    minutes of its training (models loaded, updates, checkpoints; summed over resumes and rounds)."""
    meta = {"algo": algo, "labels": labels, "episodes": episodes, "train_minutes": seconds / 60, "episodes_are": counts}
    atomic_write_text(folder / POLICY_META, json.dumps(meta, indent=2))


def read_policy_meta(folder: Path) -> dict:
    """What `write_policy_meta` saved, or {} for a policy saved without it (older runs, checkpoints,
    another program's model) or whose file cannot be read."""
    return read_json_object(Path(folder) / POLICY_META)
