"""The experiment loop: offline, online and batched label collection through the label store,
resumable, obeying the Andon cord (issue #5; Ziegler et al. 2019, §2.3 and §4.3 on online vs
offline data collection).

Every mode is the same loop over rounds; the modes differ only in when samples are enqueued:

    for round r:
        1. sample from the current policy (round 0: rho) and enqueue them as batch round-r
           (online: already enqueued during the previous round's PPO)
        2. wait until people / label workers have labeled batch round-r
        3. train a reward model from the base LM on every label so far; guard: it must beat chance
        4. PPO from the latest checkpoint to the end of this round's segment, checking the Andon
           cord and the KL guard between updates; online: halfway through the segment, sample the
           current policy and enqueue batch round-(r+1), so it is labeled while PPO runs on

offline = 1 round. batched = a few large rounds; PPO idles while people label. online = many
rounds (the paper retrained ~20 times), labels front-loaded by `experiment.schedule_power`.

Crash safety: every phase is idempotent and keyed by files written atomically (samples, reward
models, PPO checkpoints after every update) plus the store's idempotent enqueue, so a process
killed anywhere resumes with `--resume`, loses no label, duplicates no task and repeats at most
one PPO update.

run_dir/ (besides `lmpref run`'s config.json, checkpoints/, metrics.jsonl, policy/, eval.json)
  experiment.json              the loop's state: round, per-round records, halt reason
  rounds/round-NNN/samples.jsonl   the samples enqueued as that batch
  rounds/round-NNN/labels.jsonl    every label so far, as the reward model of that round saw them
  reward_models/round-NNN/     that round's reward model (reward_model -> the latest, for `evaluate`)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from lmpref import store
from lmpref.config import ConfigError, RunConfig, save_config
from lmpref.experiment_guards import hacking_guard, heldout_accuracy, kl_guard, label_schedule, reward_guard, segment_ends, validation_win_rate
from lmpref.io import atomic_write_text, read_jsonl, write_jsonl
from lmpref.store.experiment import publish_status

SEGMENT_END = "end of this round's PPO segment"
KILL_ENV = "LMPREF_TEST_KILL_AT"  # test-only: "<point>:<round>" SIGKILLs the loop there (see `_kill_point`)


@dataclass
class Experiment:
    """What every phase needs: the config, the run directory, the store and the saved state."""

    cfg: RunConfig
    run_dir: Path
    sessions: object  # sessionmaker of the label store
    run: str  # run name in the store
    state: dict

    def save(self) -> None:
        atomic_write_text(self.run_dir / "experiment.json", json.dumps(self.state, indent=2))

    def round_dir(self, r: int) -> Path:
        return self.run_dir / "rounds" / f"round-{r:03d}"

    def record(self, r: int) -> dict:
        while len(self.state["rounds"]) <= r:
            self.state["rounds"].append({"round": len(self.state["rounds"])})
        return self.state["rounds"][r]

    def andon(self) -> str | None:
        """Why training must stop now (an open Andon event for this run), else None."""
        with store.transaction(self.sessions) as session:
            events = store.open_andon_events(session, run=self.run)
            if not events:
                return None
            ev = events[0]
            who = ev.puller.name if ev.puller else "an automatic guard"
            return f"Andon event {ev.id} pulled by {who} at {ev.pulled_at:%Y-%m-%d %H:%M:%S} UTC: {ev.reason}"

    def pull(self, reason: str) -> str:
        """A guard pulls the cord itself, so the stop is recorded and shown like a person's."""
        with store.transaction(self.sessions) as session:
            store.pull_andon(session, reason=reason, run=self.run)
        return self.andon() or reason

    def publish(self, phase: str, message: str) -> None:
        print(f"[experiment] {message}", flush=True)
        self.state["phase"], self.state["message"] = phase, message
        self.save()
        metrics = _metrics_rows(self.run_dir)
        step = max(1, len(metrics) // 200)  # at most ~200 points per curve
        latest = self.round_dir(self.state["round"]) / "samples.jsonl"
        samples = [{"query": rec["query"], "response": rec["responses"][0], "policy": (rec.get("policies") or [rec.get("policy")])[0]}
                   for _, rec in list(read_jsonl(latest))[:5]] if latest.exists() else []
        status = {
            "mode": self.cfg.experiment.mode, "round": self.state["round"], "rounds": self.cfg.experiment.num_rounds(),
            "phase": phase, "message": message, "updated_at": time.time(), "finished": self.state.get("finished", False),
            "halted": self.state.get("halted"), "round_records": self.state["rounds"], "samples": samples,
            "curves": {k: [[m["step"], m[k]] for m in metrics[::step] if k in m] for k in ("objective/scores", "objective/kl")},
        }
        with store.transaction(self.sessions) as session:
            publish_status(session, run=self.run, status=status)


def _metrics_rows(run_dir: Path) -> list[dict]:
    """PPO metrics, one row per update; an update repeated after a crash keeps its last row."""
    path = run_dir / "metrics.jsonl"
    rows = {rec["step"]: rec for _, rec in read_jsonl(path)} if path.exists() else {}
    return [rows[k] for k in sorted(rows)]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _kill_point(point: str, r: int) -> None:
    """Test-only (`LMPREF_TEST_KILL_AT=point:round`): die here as `kill -9` would, to test resuming."""
    if os.environ.get(KILL_ENV) == f"{point}:{r}":
        os.kill(os.getpid(), signal.SIGKILL)


def _checkpoint_update(run_dir: Path) -> int:
    from lmpref.pipeline import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    return json.loads((ckpt / "state.json").read_text())["update"] if ckpt else 0


# ---------------------------------------------------------------------------------------------
# Phases


def sample_round(ex: Experiment, r: int, n: int, since: int = 0) -> Path:
    """Write batch round-r's samples (once) and enqueue them (idempotent: a rerun adds nothing).
    Round 0 samples rho. Later rounds sample the latest PPO checkpoint, and a `validation_share`
    of their comparisons hold k/2 samples of rho and k/2 of the policy, in a seeded random order.
    `since`: the update where the PPO segment that made this policy began (its mean reward is recorded)."""
    from lmpref.models import load_causal_lm, load_tokenizer
    from lmpref.pipeline import latest_checkpoint
    from lmpref.runtime import setup
    from lmpref.sampling import sample_records
    from lmpref.tasks import make_query_source

    cfg, e, path = ex.cfg, ex.cfg.experiment, ex.round_dir(r) / "samples.jsonl"
    rec = ex.record(r)
    if not path.exists():
        setup(cfg)
        tok = load_tokenizer(cfg.model.name, cfg.model.cache_dir)
        queries = make_query_source(tok, cfg.task, "train").sample(n, f"experiment-{cfg.seed}-round-{r}")
        ref = load_causal_lm(cfg.model.name, cfg.model.cache_dir, cfg.model.dtype)
        ckpt = latest_checkpoint(ex.run_dir) if r > 0 else None
        kw = {"batch_size": cfg.sample.batch_size, "seed": cfg.seed * 1000 + r}
        if ckpt is None:
            records = sample_records(ref, tok, queries, cfg.task, k=cfg.sample.k, policy_id=f"ref:{cfg.model.name}", **kw)
        else:
            pi, pi_id = load_causal_lm(str(ckpt), dtype=cfg.model.dtype), f"policy:{ckpt.name}"
            n_val = round(n * e.validation_share)
            records = sample_records(pi, tok, queries[n_val:], cfg.task, k=cfg.sample.k, policy_id=pi_id, **kw)
            half = cfg.sample.k // 2
            from_ref = sample_records(ref, tok, queries[:n_val], cfg.task, k=half, policy_id=f"ref:{cfg.model.name}", **kw)
            from_pi = sample_records(pi, tok, queries[:n_val], cfg.task, k=half, policy_id=pi_id, **kw)
            rng = random.Random(f"validation-{cfg.seed}-{r}")
            records += [_mix(a, b, rng) for a, b in zip(from_ref, from_pi)]
            rec["policy_update"] = _checkpoint_update(ex.run_dir)
            seg = [m["objective/scores"] for m in _metrics_rows(ex.run_dir) if since < m["step"] <= rec["policy_update"]]
            rec["policy_score"] = sum(seg) / len(seg) if seg else None
        write_jsonl(path, records)
        ex.save()
    _kill_point("sampled", r)
    records = [x for _, x in read_jsonl(path)]
    with store.transaction(ex.sessions) as session:
        res = store.enqueue(session, run=ex.run, records=records, batch=f"round-{r:03d}", redundancy=e.redundancy)
    rec["tasks"] = res.created + res.existing
    ex.publish("enqueued", f"round {r}: batch round-{r:03d} holds {rec['tasks']} comparisons ({res.created} new)")
    _kill_point("enqueued", r)
    return path


def _mix(a: dict, b: dict, rng: random.Random) -> dict:
    """A validation record: rho's samples `a` and the policy's `b` of one query, shuffled."""
    order = list(range(len(a["responses"]) + len(b["responses"])))
    rng.shuffle(order)
    both = {key: a[key] + b[key] for key in ("responses", "response_ids", "valid")}
    policies = [a["policy"]] * len(a["responses"]) + [b["policy"]] * len(b["responses"])
    out = {key: [both[key][i] for i in order] for key in both}
    return {**a, **out, "policies": [policies[i] for i in order], "kind": "validation"}


def wait_for_labels(ex: Experiment, r: int) -> str | None:
    """Sleep-poll the store until batch round-r is fully labeled; an Andon event ends the wait."""
    batch, last = f"round-{r:03d}", None
    while True:
        if reason := ex.andon():
            return reason
        with store.transaction(ex.sessions) as session:
            p = store.progress(session, run=ex.run, batch=batch)
        if p.queue_depth == 0:
            return None
        line = f"round {r}: waiting for labels: {p.labels} given, {p.queue_depth} still wanted ({p.complete}/{p.tasks} comparisons done)"
        if line != last:
            ex.publish("waiting", line)
            last = line
        _kill_point("waiting", r)
        time.sleep(ex.cfg.experiment.poll_seconds)


def train_reward_round(ex: Experiment, r: int, guards: bool = True) -> str | None:
    """Retrain from the base LM on every label so far (the paper retrains from scratch), then the
    pre-PPO guard on the model as saved and the reward-hacking guard. Returns a guard's reason, or
    None. `guards=False` when an admin cleared this round's guard alarm and the run was resumed."""
    from lmpref.pipeline import step_train_reward

    cfg, rec = ex.cfg, ex.record(r)
    out = ex.run_dir / "reward_models" / f"round-{r:03d}"
    labels_path = ex.round_dir(r) / "labels.jsonl"
    if not (out / "config.json").exists():
        with store.transaction(ex.sessions) as session:
            rows = list(store.export_records(session, run=ex.run, fmt="bestofk"))
        rec["labels"] = write_jsonl(labels_path, rows)
        win, n_val = validation_win_rate([x for x in rows if x["batch"] == f"round-{r:03d}"])
        rec.update(win_rate=None if n_val == 0 else win, n_validation=n_val)
        ex.publish("reward", f"round {r}: training the reward model on {rec['labels']} labels")
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        step_train_reward(cfg, labels_path, ex.round_dir(0) / "samples.jsonl", tmp, ex.round_dir(r) / "reward_metrics.jsonl")
        tmp.rename(out)
        _kill_point("reward", r)
    acc, chance, n = heldout_accuracy(out, labels_path, cfg.reward.holdout_fraction, cfg.seed)
    rec.update(rm_accuracy=acc, chance=chance, n_heldout=n, reward_model=str(out.relative_to(ex.run_dir)))
    latest = ex.run_dir / "reward_model"
    shutil.rmtree(latest, ignore_errors=True)
    shutil.copytree(out, latest)
    ex.publish("reward", f"round {r}: reward model held-out accuracy {acc:.1%} (chance {chance:.1%}, n={n}); "
               f"labelers' win rate of the policy over rho {_pct(rec.get('win_rate'))} (n={rec.get('n_validation', 0)})")
    e = cfg.experiment
    if not guards:
        return None
    return reward_guard(acc, chance, n, e.reward_guard_margin) or hacking_guard(ex.state["rounds"][: r + 1], e.hacking_win_drop, e.min_validation_labels)


def ppo_segment(ex: Experiment, r: int, end: int) -> str | None:
    """PPO from the latest checkpoint up to update `end`. Between updates: the Andon cord and the
    KL guard. Returns why it stopped early, or None when the segment is done."""
    from lmpref.pipeline import step_train_policy

    start = _checkpoint_update(ex.run_dir)
    final = end == ex.cfg.ppo.total_episodes // ex.cfg.ppo.batch_size
    if start >= end and not (final and not (ex.run_dir / "policy" / "config.json").exists()):
        return None  # (the last segment also writes policy/: a kill may have come just before that)
    ex.publish("ppo", f"round {r}: PPO updates {start + 1}-{end}")
    calls = 0

    def should_stop() -> str | None:
        nonlocal calls
        calls += 1
        if calls > 1:  # an update has just finished (and been checkpointed)
            _kill_point("ppo", r)
            last = _metrics_rows(ex.run_dir)[-1]
            if reason := kl_guard(last["objective/kl"], ex.cfg.ppo.kl_target, ex.cfg.experiment.kl_guard_factor):
                return ex.pull(reason)
        if reason := ex.andon():
            return reason
        return SEGMENT_END if start + calls - 1 >= end else None

    state = step_train_policy(ex.cfg, ex.run_dir / "reward_models" / f"round-{r:03d}", ex.run_dir, resume=True, should_stop=should_stop)
    stopped = state.get("stopped")
    return None if stopped in (None, SEGMENT_END) else stopped


# ---------------------------------------------------------------------------------------------
# The loop


def run_experiment(cfg: RunConfig, *, db: str | None, resume: bool = False) -> dict:
    """Run (or resume) an experiment; returns {"stopped": reason} when halted, else the evaluation."""
    e = cfg.experiment
    run_dir = cfg.resolved_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "experiment.json"
    if not resume and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} is not empty: pass --resume to continue that experiment, or choose --run-dir")
    state = json.loads(state_path.read_text()) if state_path.exists() else {"mode": e.mode, "round": 0, "rounds": []}
    if state["mode"] != e.mode:
        raise ConfigError(f"{run_dir} holds a {state['mode']} experiment; resume it with --mode {state['mode']}")
    # Crash safety: a checkpoint after every update, so a killed run repeats at most one update.
    cfg = dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, checkpoint_every=1))
    save_config(cfg, run_dir / "config.json")
    ex = Experiment(cfg, run_dir, store.open_store(db), e.store_run or run_dir.resolve().name, state)
    with store.transaction(ex.sessions) as session:
        store.ensure_run(session, name=ex.run)
    if state.get("finished"):
        ex.publish("finished", f"experiment {ex.run} already finished")
        return state.get("eval", {})
    halted = state.pop("halted", None)
    cleared_guard_round = halted["round"] if halted and halted.get("guard") else None
    n_rounds = e.num_rounds()
    targets = label_schedule(e.labels or cfg.sample.num_queries, n_rounds, e.schedule_power)
    ends = segment_ends(cfg.ppo.total_episodes // cfg.ppo.batch_size, n_rounds)
    print(f"[experiment] {e.mode}: {n_rounds} rounds, comparisons by round {targets}, PPO updates by round {ends}; store run {ex.run!r}")
    for r in range(state["round"], n_rounds):
        state["round"] = r
        if not (reason := ex.andon()):
            sample_round(ex, r, targets[r] - (targets[r - 1] if r else 0), since=ends[r - 2] if r >= 2 else 0)
            reason = wait_for_labels(ex, r)
        if not reason and (reason := train_reward_round(ex, r, guards=r != cleared_guard_round)):
            state["halted"] = {"guard": True}
            reason = ex.pull(reason)
        seg_start = ends[r - 1] if r else 0
        if not reason and e.mode == "online" and r + 1 < n_rounds:
            reason = ppo_segment(ex, r, seg_start + math.ceil((ends[r] - seg_start) / 2))
            if not reason:  # the next batch, from the policy halfway through: labeled while PPO runs on
                sample_round(ex, r + 1, targets[r + 1] - targets[r], since=seg_start)
        if not reason:
            reason = ppo_segment(ex, r, ends[r])
        if reason:
            guard = state.get("halted", {}).get("guard") or cleared_guard_round == r  # kept until resumed past it
            state["halted"] = {"round": r, "phase": state.get("phase"), "reason": reason, "guard": bool(guard)}
            ex.publish("halted", f"stopped in round {r}: {reason}. Resume with --resume once an admin clears it (lmpref andon clear ID).")
            return {"stopped": reason}
        ex.record(r)["ppo_update"] = _checkpoint_update(run_dir)
        state["round"] = r + 1
        ex.save()
    result = {}
    if e.evaluate:
        from lmpref.eval_steps import step_evaluate

        ex.publish("evaluating", "evaluating the final policy on held-out queries")
        result = step_evaluate(cfg, run_dir / "policy", run_dir / "reward_model", run_dir / "eval.json")
        state["eval"] = {k: result[k] for k in ("win_rate", "kl") if k in result}
    state["finished"], state["round"] = True, n_rounds - 1
    ex.publish("finished", f"experiment {ex.run} finished: {n_rounds} rounds, {state['rounds'][-1].get('labels')} labels")
    return result
