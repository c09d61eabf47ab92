"""Every check on how the process was started, in one place: the launcher and accelerate agree on
the number of processes, the distributed plugin is one the loop supports, and only `train-policy`
runs on several processes. Each refusal is a ConfigError that names the fix."""

from __future__ import annotations

import os

from lmpref.config import ConfigError


def check_world(accelerator) -> None:
    """A launcher that started several processes which accelerate does not see as one job would
    have each train alone and write the same files."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world != accelerator.num_processes:
        raise ConfigError(
            f"started as one of {world} processes, but accelerate sees {accelerator.num_processes}: "
            "on CPU set ACCELERATE_USE_CPU=true (e.g. `ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 -m "
            "lmpref.cli "
            "train-policy ...`; `accelerate launch --cpu` starts one process unless MPI is set up); on GPUs use "
            "`accelerate launch`"
        )


def check_supported(accelerator) -> None:
    """Refuse the launch configurations the loop cannot run, with the fix (a ConfigError: the CLI
    prints it without a traceback)."""
    if accelerator is None:
        return
    from accelerate.utils import DistributedType

    from lmpref.config import ConfigError

    if accelerator.distributed_type == DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ConfigError(
            "FSDP version 1 is not supported: launch with FSDP version 2 "
            "(`accelerate launch --use_fsdp --fsdp_version 2 ...`, or fsdp_version: 2 in the config file)"
        )
    if accelerator.distributed_type == DistributedType.DEEPSPEED and accelerator.state.deepspeed_plugin.zero_stage == 3:
        raise ConfigError(
            "DeepSpeed ZeRO-3 is not supported (the rollout would need every parameter gathered): "
            "use FSDP version 2 to shard parameters, or ZeRO stage 1 or 2"
        )


def one_process_unless_ppo(command: str) -> None:
    """Only PPO is written for several processes; any other command started by `accelerate launch`
    would run once per process, each writing the same files."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1 and command != "train-policy":
        raise ConfigError(
            f"`lmpref {command}` runs in one process, but this is one of {world} started by accelerate launch / "
            "torchrun: "
            "run it plainly, and launch only `lmpref train-policy` on several processes "
            "(e.g. `lmpref sample`, `label` and `train-reward` plainly, then `accelerate launch ... -m lmpref.cli "
            "train-policy`)"
        )
