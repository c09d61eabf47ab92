"""Named points of a run, and the observers called there.

The experiment loop and `step_train_policy` announce where they are (`point("sampled", round)`,
`point("update", step)` once an update's metrics row is logged and before its checkpoint); whoever
registers an observer hears each one. Nothing is registered in a normal run. The kill/resume tests
register one that dies at a chosen point as `kill -9` would (`tests/kill_at.py`); a tool could time
phases or stream progress the same way.

Points: `sampled`, `enqueued`, `waiting`, `reward` (n = round), `ppo` (n = round, after each
update of a segment), `dpo` (n = round, once its DPO run has saved its policy, before the loop
records it), `update` (n = PPO / RLOO update or DPO step), `online` (n = PPO update)."""

from __future__ import annotations

from collections.abc import Callable

Observer = Callable[[str, int], None]
_observers: list[Observer] = []


def register(observer: Observer) -> Observer:
    """Call `observer(name, n)` at every point from now on (in this process)."""
    _observers.append(observer)
    return observer


def unregister(observer: Observer) -> None:
    _observers.remove(observer)


def point(name: str, n: int) -> None:
    for observer in list(_observers):
        observer(name, n)
