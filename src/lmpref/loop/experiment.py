"""The experiment loop: offline, online and batched label collection through the label store,
resumable, obeying the Andon cord (issue #5; Ziegler et al. 2019, §2.3 and §4.3 on online vs
offline data collection).

Every mode is the same loop over rounds; the modes differ in when samples are enqueued and in
which labels a retrain waits for:

    for round r:
        1. offline, batched, online round 0: sample the current policy (round 0: rho) and enqueue
           the samples as batch round-r
        2. wait until the batches this retrain needs are labeled (`Experiment.batches_needed`)
        3. train a reward model from the base LM on every label so far; guard: it must beat chance
        4. PPO (RLOO with `algo = rloo`) from the latest checkpoint to the end of this round's
           segment, checking the KL guard and the Andon cord between updates; online: after every
           `experiment.enqueue_every`-th update, sample the current policy and enqueue its share of
           round r+1's comparisons as batch round-(r+1)-uUUUUUU, so labelers always have the
           current policy's samples

offline = 1 round. batched = a few large rounds; PPO idles while people label. online = many
rounds (the paper retrained ~20 times), labels front-loaded by `experiment.schedule_power`, and
PPO never waits for labels but at a retrain whose batches from a whole segment ago are not in yet.

With `algo = dpo` (iterative DPO, `dpo_round`) a round has no reward model and no segment:
        1. every mode: sample the current policy (round 0: rho; later: the previous round's DPO
           policy) and enqueue the samples as batch round-r
        2. wait until round r's batch is labeled
        3. the guards that judge labels, not a model (`label_guards`)
        4. K-way DPO on every label so far from the previous round's policy, rho the base model
           throughout, the Andon cord read between steps
online and batched then differ only in their default number of rounds (20 and 4) and so in the
size of each round: DPO learns from the labels themselves, so there is nothing to train on while
the current policy's samples are being labeled, and no online enqueue during training.

Crash safety: every phase is idempotent and keyed by files written atomically (samples, reward
models, PPO checkpoints after every update) plus the store's idempotent enqueue, so a process
killed anywhere resumes with `--resume`, loses no label, duplicates no task and repeats at most
one PPO update.

run_dir/ (besides `lmpref run`'s config.json, checkpoints/, metrics.jsonl, policy/, eval.json)
  experiment.json              the loop's state: round, per-round records, halt reason
  rounds/round-NNN/samples.jsonl   the samples enqueued as batch round-NNN
  rounds/round-NNN/samples-uUUUUUU.jsonl   online: those enqueued after update U as batch round-NNN-uUUUUUU
  rounds/round-NNN/labels.jsonl    every label so far, as the reward model of that round saw them
  reward_models/round-NNN/     that round's reward model (reward_model -> the latest, for `evaluate`)
  dpo/round-NNN/               algo = dpo: that round's DPO run (`lmpref train-policy --algo dpo`'s layout:
                               metrics.jsonl, tb/, dpo_ref_logprobs.json, dpo.json, policy/; its checkpoints
                               are removed once its policy is saved); policy/ -> the latest, metrics.jsonl ->
                               every round's rows numbered on
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from lmpref import store
from lmpref.config import ConfigError, RunConfig, save_config
from lmpref.io import DataError, atomic_dir, atomic_write_text, read_jsonl, write_jsonl
from lmpref.loop.schedule import batch_round, enqueue_interval, label_schedule, online_batch, online_plan, segment_ends
from lmpref.steps import hooks
from lmpref.steps.guards import (
    direction_guard,
    gold_guard,
    hacking_guard,
    heldout_accuracy,
    kl_guard,
    reward_guard,
    validation_win_rate,
    win_rate_guard,
)
from lmpref.steps.preflight import preflight
from lmpref.store.experiment import publish_status

SEGMENT_END = "end of this round's PPO segment"


@dataclass
class Experiment:
    """What every phase needs: the config, the run directory, the store and the saved state."""

    cfg: RunConfig
    run_dir: Path
    sessions: object  # sessionmaker of the label store
    run: str  # run name in the store
    state: dict
    targets: list[int]  # comparisons wanted by the end of each round, cumulative (label_schedule)
    ends: list[int]  # the PPO update at which each round's segment ends (segment_ends)

    def save(self) -> None:
        atomic_write_text(self.run_dir / "experiment.json", json.dumps(self.state, indent=2))

    def round_dir(self, r: int) -> Path:
        return self.run_dir / "rounds" / f"round-{r:03d}"

    def record(self, r: int) -> dict:
        while len(self.state["rounds"]) <= r:
            self.state["rounds"].append({"round": len(self.state["rounds"])})
        return self.state["rounds"][r]

    def dpo_dir(self, r: int) -> Path:
        return self.run_dir / "dpo" / f"round-{r:03d}"

    @property
    def overlaps(self) -> bool:
        """Whether later rounds' samples are enqueued during the previous round's training (online
        PPO or RLOO). DPO's rounds never overlap: it trains on labels only, in every mode."""
        return self.cfg.experiment.mode == "online" and self.cfg.algo != "dpo"

    def online_plan(self, r: int) -> list[tuple[int, int, int]]:
        """Online: (update, comparisons, validation) enqueued during round r's PPO for retrain r + 1."""
        e = self.cfg.experiment
        if not self.overlaps or r + 1 >= len(self.ends):
            return []
        seg_start, quota = self.ends[r - 1] if r else 0, self.targets[r + 1] - self.targets[r]
        every = enqueue_interval(
            e.enqueue_every, self.ends[r] - seg_start, quota, self.cfg.sample.batch_size // self.cfg.sample.k
        )
        return online_plan(seg_start, self.ends[r], every, quota, e.validation_share)

    def round_batches(self, r: int) -> list[str]:
        """The batches of round r: the comparisons that retrain r is the first to see."""
        if not self.overlaps or r == 0:
            return [f"round-{r:03d}"]
        return [online_batch(r, update) for update, _, _ in self.online_plan(r - 1)]

    def batches_needed(self, r: int) -> list[str]:
        """What retrain r waits for. Offline, batched and online round 0: round r's batch. Online
        later rounds: round r-1's batches (sampled during round r-2's PPO, so labelers had a whole
        segment for them), and round r's only sampled during round r-1's PPO are used as far as they
        are labeled; the last retrain waits for those too, so the run trains on all it asked for."""
        if not self.overlaps or r == 0:
            return self.round_batches(r)
        rounds = [r - 1, r] if r == len(self.ends) - 1 else [r - 1]
        return [b for k in rounds for b in self.round_batches(k)]

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
        latest = self.run_dir / self.state.get("latest_samples", "-")
        samples = (
            [
                {
                    "query": rec["query"],
                    "response": rec["responses"][0],
                    "policy": (rec.get("policies") or [rec.get("policy")])[0],
                }
                for _, rec in list(read_jsonl(latest))[:5]
            ]
            if latest.is_file()
            else []
        )
        status = {
            "mode": self.cfg.experiment.mode,
            "round": self.state["round"],
            "rounds": self.cfg.experiment.num_rounds(),
            "phase": phase,
            "message": message,
            "updated_at": time.time(),
            "finished": self.state.get("finished", False),
            "halted": self.state.get("halted"),
            "round_records": self.state["rounds"],
            "samples": samples,
            "curves": {
                k: [[m["step"], m[k]] for m in metrics[::step] if k in m] for k in ("objective/scores", "objective/kl")
            },
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


def _checkpoint_update(run_dir: Path) -> int:
    from lmpref.steps.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(run_dir)
    return json.loads((ckpt / "state.json").read_text())["update"] if ckpt else 0


# ---------------------------------------------------------------------------------------------
# Phases


def sample_round(ex: Experiment, r: int, n: int, since: int = 0) -> None:
    """Batch round-r (offline, batched, and round 0 of online): `n` comparisons at the round's start;
    from round 1 on, a `validation_share` of them are validation comparisons."""
    n_val = round(n * ex.cfg.experiment.validation_share) if r else 0
    sample_batch(ex, r, f"round-{r:03d}", n, n_val, key=f"round-{r}", seed=ex.cfg.seed * 1000 + r, since=since)


def enqueue_online(ex: Experiment, r: int, update: int, n: int, n_val: int) -> None:
    """Online, between PPO updates of round r: `n` comparisons (`n_val` of them validation) from the
    policy after `update`, as batch round-(r+1)-uUUUUUU for retrain r+1."""
    hooks.point("online", update)  # after that update's checkpoint, before its batch exists
    batch = online_batch(r + 1, update)
    seed = (ex.cfg.seed * 1000 + r + 1) * 1_000_000 + update
    sample_batch(ex, r + 1, batch, n, n_val, key=batch, seed=seed, since=ex.ends[r - 1] if r else 0, update=update)


def sample_batch(
    ex: Experiment,
    r: int,
    batch: str,
    n: int,
    n_val: int,
    *,
    key: str,
    seed: int,
    since: int,
    update: int | None = None,
) -> None:
    """Write `batch`'s samples once (rounds/round-r/, seeded by `key` and `seed`) and enqueue them
    (idempotent: a rerun adds nothing). Round 0 samples rho. Later rounds sample the current policy
    (`_current_policy`; online: it must be the checkpoint after `update`); `n_val` of their `n`
    comparisons hold k/2 samples of rho and k/2 of the policy, in a seeded random order. `since`:
    the update where the PPO segment that made this policy began (`_provenance`)."""
    from lmpref.core.loading import load_causal_lm, load_tokenizer
    from lmpref.core.runtime import setup
    from lmpref.core.sampling import sample_records
    from lmpref.tasks import make_query_source

    cfg, rec = ex.cfg, ex.record(r)
    path = ex.round_dir(r) / ("samples.jsonl" if update is None else f"samples-u{update:06d}.jsonl")
    if not path.exists():
        setup(cfg)
        tok = load_tokenizer(cfg.model.name, cfg.model.cache_dir)
        queries = make_query_source(tok, cfg.task, "train", cfg.model.name).sample(n, f"experiment-{cfg.seed}-{key}")
        ckpt, pi_id = _current_policy(ex, r) if r > 0 else (None, "")
        if update is not None and _checkpoint_update(ex.run_dir) != update:
            raise RuntimeError(
                f"batch {batch} must sample the policy after update {update}, but the latest checkpoint is {ckpt}"
            )
        ref = load_causal_lm(cfg.model.name, cfg.model.cache_dir, cfg.model.dtype)
        kw = {"batch_size": cfg.sample.batch_size, "seed": seed}
        if ckpt is None:
            records = sample_records(
                ref, tok, queries, cfg.task, k=cfg.sample.k, policy_id=f"ref:{cfg.model.name}", **kw
            )
        else:
            pi = load_causal_lm(str(ckpt), dtype=cfg.model.dtype)
            records = sample_records(pi, tok, queries[n_val:], cfg.task, k=cfg.sample.k, policy_id=pi_id, **kw)
            half = cfg.sample.k // 2
            from_ref = sample_records(
                ref, tok, queries[:n_val], cfg.task, k=half, policy_id=f"ref:{cfg.model.name}", **kw
            )
            from_pi = sample_records(pi, tok, queries[:n_val], cfg.task, k=half, policy_id=pi_id, **kw)
            rng = random.Random(f"validation-{cfg.seed}-{key}")
            records += [_mix(a, b, rng) for a, b in zip(from_ref, from_pi)]
            rec.update(_provenance(ex, r, since))
        write_jsonl(path, records)
        ex.save()
    hooks.point("sampled", r)
    records = [x for _, x in read_jsonl(path)]
    with store.transaction(ex.sessions) as session:
        res = store.enqueue(session, run=ex.run, records=records, batch=batch, redundancy=cfg.experiment.redundancy)
    rec.setdefault("batches", {})[batch] = res.created + res.existing
    rec["tasks"] = sum(rec["batches"].values())
    ex.state["latest_samples"] = str(path.relative_to(ex.run_dir))
    ex.publish(
        "ppo" if update is not None else "enqueued",
        f"round {r}: batch {batch} holds {res.created + res.existing} comparisons ({res.created} new)",
    )
    hooks.point("enqueued", r)


def _current_policy(ex: Experiment, r: int) -> tuple[Path | None, str]:
    """The policy round r samples (r > 0) and its id in the samples: the latest PPO / RLOO checkpoint,
    or with DPO the previous round's policy."""
    from lmpref.steps.checkpoint import latest_checkpoint

    if ex.cfg.algo == "dpo":
        return ex.dpo_dir(r - 1) / "policy", f"policy:dpo-round-{r - 1:03d}"
    ckpt = latest_checkpoint(ex.run_dir)
    return ckpt, f"policy:{ckpt.name if ckpt else None}"


def _provenance(ex: Experiment, r: int, since: int) -> dict:
    """Where round r's policy samples came from. PPO / RLOO: the checkpoint's update and the mean
    reward of its segment since update `since` (`policy_score`, which the reward-hacking guard reads).
    DPO: the round that trained the policy; it has no reward model, so no score."""
    if ex.cfg.algo == "dpo":
        return {"policy_round": r - 1}
    update = _checkpoint_update(ex.run_dir)
    seg = [m["objective/scores"] for m in _metrics_rows(ex.run_dir) if since < m["step"] <= update]
    return {"policy_update": update, "policy_score": sum(seg) / len(seg) if seg else None}


def _mix(a: dict, b: dict, rng: random.Random) -> dict:
    """A validation record: rho's samples `a` and the policy's `b` of one query, shuffled."""
    order = list(range(len(a["responses"]) + len(b["responses"])))
    rng.shuffle(order)
    both = {key: a[key] + b[key] for key in ("responses", "response_ids", "valid")}
    policies = [a["policy"]] * len(a["responses"]) + [b["policy"]] * len(b["responses"])
    out = {key: [both[key][i] for i in order] for key in both}
    return {**a, **out, "policies": [policies[i] for i in order], "kind": "validation"}


def wait_for_labels(ex: Experiment, r: int, batches: list[str]) -> str | None:
    """Sleep-poll the store until every batch in `batches` is fully labeled; an Andon event ends the wait."""
    pending, last = list(batches), None
    while True:
        if reason := ex.andon():
            return reason
        with store.transaction(ex.sessions) as session:
            progress = [store.progress(session, run=ex.run, batch=b) for b in pending]
        pending = [p.batch for p in progress if p.queue_depth]
        if not pending:
            return None
        given, wanted = sum(p.labels for p in progress), sum(p.queue_depth for p in progress)
        done, tasks = sum(p.complete for p in progress), sum(p.tasks for p in progress)
        line = (
            f"round {r}: waiting for labels: {given} given, {wanted} still wanted "
            f"({done}/{tasks} comparisons done in {', '.join(pending)})"
        )
        if line != last:
            ex.publish("waiting", line)
            last = line
        hooks.point("waiting", r)
        time.sleep(ex.cfg.experiment.poll_seconds)


def collect_labels(ex: Experiment, r: int) -> Path:
    """Every label of the run so far, from the store into rounds/round-r/labels.jsonl (what round r
    trains on), and the labelers' validation win rate of every round so far (online: earlier rounds'
    labels may have come in since). Refuses, in one line, labels that were all dropped as too fast."""
    rec, labels_path = ex.record(r), ex.round_dir(r) / "labels.jsonl"
    with store.transaction(ex.sessions) as session:
        rows = list(store.export_records(session, run=ex.run, fmt="bestofk"))
        fast = sum(1 for _ in store.export_records(session, run=ex.run, fmt="bestofk", include_fast=True)) - len(rows)
    if fast and not any(not row.get("tie") for row in rows):
        raise DataError(
            f"run {ex.run!r}: no usable labels: all {fast} labels were dropped as too fast (given in under "
            "`lmpref serve --min-seconds`, default 5 s, and so distrusted as a person's); a program should label "
            "through `lmpref label-worker`, whose labels are not timed, or serve with --min-seconds 0"
        )
    rec["labels"] = write_jsonl(labels_path, rows)
    for k, k_rec in enumerate(ex.state["rounds"][: r + 1]):
        win, n_val = validation_win_rate([x for x in rows if batch_round(x["batch"]) == k])
        k_rec.update(win_rate=None if n_val == 0 else win, n_validation=n_val)
    return labels_path


def _gold_guard(ex: Experiment) -> str | None:
    """The labelers' answers to gold comparisons, judged against chance."""
    with store.transaction(ex.sessions) as session:
        gold = [(q.name, q.gold_answered, q.gold_correct) for q in store.quality_report(session, run=ex.run).labelers]
    return gold_guard(gold, 1 / ex.cfg.sample.k, ex.cfg.experiment.min_validation_labels)


def train_reward_round(ex: Experiment, r: int, guards: bool = True) -> str | None:
    """Retrain from the base LM on every label so far (the paper retrains from scratch), then the
    pre-PPO guard on the model as saved and the reward-hacking guard. Returns a guard's reason, or
    None. `guards=False` when an admin cleared this round's guard alarm and the run was resumed."""
    from lmpref.steps.train import step_train_reward

    cfg, rec = ex.cfg, ex.record(r)
    out = ex.run_dir / "reward_models" / f"round-{r:03d}"
    labels_path = ex.round_dir(r) / "labels.jsonl"
    if not (out / "config.json").exists():
        collect_labels(ex, r)
        ex.publish("reward", f"round {r}: training the reward model on {rec['labels']} labels")
        with atomic_dir(out) as tmp:
            step_train_reward(
                cfg, labels_path, ex.round_dir(0) / "samples.jsonl", tmp, ex.round_dir(r) / "reward_metrics.jsonl"
            )
        hooks.point("reward", r)
    acc, chance, n = heldout_accuracy(out, labels_path, cfg.reward.holdout_fraction, cfg.seed)
    rec.update(rm_accuracy=acc, chance=chance, n_heldout=n, reward_model=str(out.relative_to(ex.run_dir)))
    latest = ex.run_dir / "reward_model"
    shutil.rmtree(latest, ignore_errors=True)
    shutil.copytree(out, latest)
    ex.publish(
        "reward",
        f"round {r}: reward model held-out accuracy {acc:.1%} (chance {chance:.1%}, n={n}); "
        f"labelers' win rate of the policy over rho {_pct(rec.get('win_rate'))} (n={rec.get('n_validation', 0)})",
    )
    e = cfg.experiment
    if not guards:
        return None
    rounds = ex.state["rounds"][: r + 1]
    return (
        _gold_guard(ex)
        or reward_guard(acc, chance, n, e.reward_guard_margin)
        or hacking_guard(rounds, e.hacking_win_drop, e.min_validation_labels)
        or win_rate_guard(rounds, e.min_validation_labels)
    )


def label_guards(ex: Experiment, r: int, guards: bool = True) -> str | None:
    """DPO's retrain step: every label so far into round r's labels file (once: a resumed round trains
    on the labels it started with), then the guards that judge labels, not a model: the labelers'
    gold answers and the labelers' win rate of the policy over rho falling (`win_rate_guard`). The
    guards that need a reward model are skipped: its held-out accuracy (`reward_guard`), the
    reward-hacking guard (the policy's reward-model score against the win rate) and, during
    training, the KL and direction guards (PPO's and RLOO's reward and KL rows; DPO logs neither)."""
    rec, labels_path = ex.record(r), ex.round_dir(r) / "labels.jsonl"
    if not labels_path.exists():
        collect_labels(ex, r)
    rec.setdefault("labels", sum(1 for _ in read_jsonl(labels_path)))  # (a kill may have come before it was saved)
    ex.publish(
        "dpo",
        f"round {r}: {rec.get('labels')} labels so far; labelers' win rate of the policy over rho "
        f"{_pct(rec.get('win_rate'))} (n={rec.get('n_validation', 0)})",
    )
    if not guards:
        return None
    return _gold_guard(ex) or win_rate_guard(ex.state["rounds"][: r + 1], ex.cfg.experiment.min_validation_labels)


def dpo_round(ex: Experiment, r: int) -> str | None:
    """Iterative DPO, round r: K-way DPO (`step_train_dpo`, as `train-policy --algo dpo` runs it: ρ's
    log-probs cached, the shared trunk cached) on every label collected so far, starting from the
    previous round's policy (round 0: the base model), with ρ the base model throughout, into
    dpo/round-r/. Returns the Andon reason when the cord stopped it, else None; a kill resumes from
    the round's last checkpoint (at most `dpo.checkpoint_every` steps repeated).

    Every label so far, not only the round's. With ρ fixed, DPO's loss is the likelihood of the labels
    under one implicit reward β·log π/ρ, and every label, whichever policy's samples it compares, is
    evidence about that reward: fitting it on all the preference data gathered so far is the
    estimate that online iterative RLHF analyses (Xiong et al. 2024, "Iterative Preference Learning
    from Human Feedback"), and it is what this loop does with the reward model for PPO and RLOO
    (retrained on every label, as Ziegler et al. 2019 did). Training on the round's labels alone is
    the recipe that also moves ρ to the last policy (Yuan et al. 2024's self-rewarding iterations);
    with ρ kept fixed it would let each round undo what the earlier rounds' labels taught.

    Each round's held-out implicit-reward accuracy is on that round's held-out split of all labels so
    far (`dpo.holdout_fraction`); as the split is redrawn on more labels, a label held out now may have
    been trained on in an earlier round."""
    from lmpref.steps.train import step_train_dpo

    rec, out = ex.record(r), ex.dpo_dir(r)
    if not (out / "dpo.json").exists():
        ex.publish("dpo", f"round {r}: DPO on {rec.get('labels')} labels from {'rho' if r == 0 else f'round {r - 1}'}")
        out.mkdir(parents=True, exist_ok=True)
        start = ex.dpo_dir(r - 1) / "policy" if r else None
        labels = ex.round_dir(r) / "labels.jsonl"
        state = step_train_dpo(ex.cfg, labels, out, resume=True, start=start, should_stop=ex.andon)
        if state.get("stopped"):
            return state["stopped"]
        hooks.point("dpo", r)
    summary = json.loads((out / "dpo.json").read_text(encoding="utf-8"))
    rec.update(
        dpo_steps=summary["step"],
        dpo_heldout_accuracy_before=summary["heldout_accuracy_before"],
        dpo_heldout_accuracy=summary["heldout_accuracy"],
        dpo_n_train=summary["n_train"],
        dpo_n_heldout=summary["n_heldout"],
        policy=str((out / "policy").relative_to(ex.run_dir)),
    )
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the round's policy is saved whole
    _merge_dpo_metrics(ex, r)
    with atomic_dir(ex.run_dir / "policy") as tmp:
        shutil.copytree(out / "policy", tmp)
    ex.publish(
        "dpo",
        f"round {r}: DPO held-out implicit-reward accuracy {_pct(summary['heldout_accuracy_before'])} -> "
        f"{_pct(summary['heldout_accuracy'])} (n={summary['n_heldout']}) after {summary['step']} steps",
    )
    return None


def _merge_dpo_metrics(ex: Experiment, r: int) -> None:
    """run_dir/metrics.jsonl: the rows of DPO rounds 0..r, `step` numbered on across rounds, with the
    `round` and the round's own `dpo/step`; rewritten whole, so a step redone after a kill shows once.
    (TensorBoard: each round's dpo/round-NNN/tb/, under the run directory.)"""
    rows, offset = [], 0
    for k in range(r + 1):
        own = _metrics_rows(ex.dpo_dir(k))
        rows += [{**m, "step": offset + m["step"], "round": k, "dpo/step": m["step"]} for m in own]
        offset += len(own)
    write_jsonl(ex.run_dir / "metrics.jsonl", rows)


def ppo_segment(ex: Experiment, r: int, end: int) -> str | None:
    """PPO from the latest checkpoint up to update `end`. Between updates: the KL guard, the Andon
    cord and, online, the planned enqueue of the current policy's samples. Returns why it stopped
    early, or None when the segment is done."""
    from lmpref.steps.train import step_train_policy

    start = _checkpoint_update(ex.run_dir)
    plan = {update: (n, n_val) for update, n, n_val in ex.online_plan(r)}
    if start in plan:  # a kill may have come between that update's checkpoint and its batch: enqueue it now
        if reason := ex.andon():
            return reason
        enqueue_online(ex, r, start, *plan[start])
    final = end == ex.cfg.policy_updates()
    if start >= end and not (final and not (ex.run_dir / "policy" / "config.json").exists()):
        return None  # (the last segment also writes policy/: a kill may have come just before that)
    ex.publish("ppo", f"round {r}: PPO updates {start + 1}-{end}")
    calls = 0

    def should_stop() -> str | None:
        nonlocal calls
        calls += 1
        update = start + calls - 1  # the last update done (and checkpointed)
        if calls > 1:  # an update has just finished
            hooks.point("ppo", r)
            last = _metrics_rows(ex.run_dir)[-1]
            if reason := kl_guard(last["objective/kl"], ex.cfg.ppo.kl_target, ex.cfg.experiment.kl_guard_factor):
                return ex.pull(reason)
            if reason := direction_guard(_metrics_rows(ex.run_dir), ex.cfg.ppo.direction_window):
                return ex.pull(reason)
        if reason := ex.andon():
            return reason
        if calls > 1 and update in plan:  # labelers get this policy's samples while PPO goes on
            enqueue_online(ex, r, update, *plan[update])
        return SEGMENT_END if update >= end else None

    state = step_train_policy(
        ex.cfg,
        ex.run_dir / "reward_models" / f"round-{r:03d}",
        ex.run_dir,
        resume=True,
        should_stop=should_stop,
        check_reward=False,
    )
    stopped = state.get("stopped")
    return None if stopped in (None, SEGMENT_END) else stopped


# ---------------------------------------------------------------------------------------------
# The loop


def run_experiment(cfg: RunConfig, *, db: str | None, resume: bool = False) -> dict:
    """Run (or resume) an experiment; returns {"stopped": reason} when halted, else the evaluation."""
    e = cfg.experiment
    run_dir = cfg.resolved_run_dir()
    preflight(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "experiment.json"
    if not resume and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} is not empty: pass --resume to continue that experiment, or choose --run-dir")
    fresh = {"mode": e.mode, "algo": cfg.algo, "round": 0, "rounds": []}
    state = json.loads(state_path.read_text()) if state_path.exists() else fresh
    if state["mode"] != e.mode:
        raise ConfigError(f"{run_dir} holds a {state['mode']} experiment; resume it with --mode {state['mode']}")
    if state.get("algo", cfg.algo) != cfg.algo:  # (older states did not record it)
        algo = state["algo"]
        raise ConfigError(f"{run_dir} holds an --algo {algo} experiment: resume it with --algo {algo}")
    # Crash safety: a checkpoint after every update, so a killed run repeats at most one update.
    cfg = dataclasses.replace(
        cfg,
        ppo=dataclasses.replace(cfg.ppo, checkpoint_every=1),
        rloo=dataclasses.replace(cfg.rloo, checkpoint_every=1),
    )
    save_config(cfg, run_dir / "config.json")
    n_rounds = e.num_rounds()
    targets = label_schedule(e.labels or cfg.sample.num_queries, n_rounds, e.schedule_power)
    ends = segment_ends(cfg.policy_updates(), n_rounds)
    ex = Experiment(cfg, run_dir, store.open_store(db), e.store_run or run_dir.resolve().name, state, targets, ends)
    with store.transaction(ex.sessions) as session:
        store.ensure_run(session, name=ex.run)
    if state.get("finished"):
        ex.publish("finished", f"experiment {ex.run} already finished")
        return state.get("eval", {})
    halted = state.pop("halted", None)
    cleared_guard_round = halted["round"] if halted and halted.get("guard") else None
    dpo = cfg.algo == "dpo"
    training = "DPO on every label so far each round" if dpo else f"{cfg.algo.upper()} updates by round {ends}"
    print(f"[experiment] {e.mode}: {n_rounds} rounds, comparisons by round {targets}, {training}; store run {ex.run!r}")
    retrain = label_guards if dpo else train_reward_round
    for r in range(state["round"], n_rounds):
        state["round"] = r
        if not (reason := ex.andon()):
            if not ex.overlaps or r == 0:  # online: later rounds' batches were enqueued during the previous PPO
                sample_round(ex, r, targets[r] - (targets[r - 1] if r else 0), since=ends[r - 2] if r >= 2 else 0)
            reason = wait_for_labels(ex, r, ex.batches_needed(r))
        if not reason and (reason := retrain(ex, r, guards=r != cleared_guard_round)):
            state["halted"] = {"guard": True}
            reason = ex.pull(reason)
        if not reason:
            reason = dpo_round(ex, r) if dpo else ppo_segment(ex, r, ends[r])
        if reason:
            guard = state.get("halted", {}).get("guard") or cleared_guard_round == r  # kept until resumed past it
            state["halted"] = {"round": r, "phase": state.get("phase"), "reason": reason, "guard": bool(guard)}
            ex.publish(
                "halted",
                f"stopped in round {r}: {reason}. Resume with --resume once an admin clears it (lmpref andon clear "
                "ID).",
            )
            return {"stopped": reason}
        if not dpo:
            ex.record(r)["ppo_update"] = _checkpoint_update(run_dir)
        state["round"] = r + 1
        ex.save()
    result = {}
    if e.evaluate:
        from lmpref.steps.evaluate import step_evaluate

        ex.publish("evaluating", "evaluating the final policy on held-out queries")
        rm = None if dpo else run_dir / "reward_model"
        result = step_evaluate(cfg, run_dir / "policy", rm, run_dir / "eval.json")
        state["eval"] = {k: result[k] for k in ("win_rate", "kl") if k in result}
    state["finished"], state["round"] = True, n_rounds - 1
    ex.publish(
        "finished", f"experiment {ex.run} finished: {n_rounds} rounds, {state['rounds'][-1].get('labels')} labels"
    )
    return result
