"""The `lmpref` command. Heavy libraries are imported inside the commands, so `lmpref serve` and
`lmpref --help` start instantly and never load torch."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from lmpref.steps.launch import one_process_unless_ppo


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--preset",
        default="sentiment",
        help="task preset: sentiment | descriptiveness | test | path/to.toml (default: sentiment)",
    )
    p.add_argument("--scale", default="small", help="size table of the preset: small | paper | tiny (default: small)")
    p.add_argument(
        "--model",
        help="policy/reference model: smollm2-135m (bundled, default), tiny-gpt2, a local directory or a Hub id",
    )
    p.add_argument("--seed", type=int, help="seed for every random choice")
    p.add_argument("--run-dir", help="output directory (default: runs/<preset>-<scale>-seed<seed>)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field with a dotted key, e.g. --set ppo.lr=3e-5 (repeatable)",
    )


def _config(args):
    from lmpref.config import make_config, parse_override_args

    overrides = parse_override_args(args.overrides)
    if args.model:
        overrides["model.name"] = args.model
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.run_dir:
        overrides["run_dir"] = args.run_dir
    if getattr(args, "algo", None):
        overrides["algo"] = args.algo
    return make_config(args.preset, args.scale, overrides)


def _finish(result: dict, done: str) -> int:
    """Exit status of a run: 3 when the Andon cord or a guard stopped it (resume with --resume), else 0."""
    if "stopped" in result:
        print(f"[lmpref] stopped: {result['stopped']}")
        return 3
    print(f"[lmpref] {done}")
    return 0


def cmd_run(args) -> int:
    from lmpref.steps.train import run_offline

    cfg = _config(args)
    print(
        f"[lmpref] run {cfg.preset} at scale {cfg.scale}, model {cfg.model.name}, seed {cfg.seed} -> "
        f"{cfg.resolved_run_dir()}"
    )
    return _finish(
        run_offline(cfg, resume=args.resume, allow_config_change=args.allow_config_change),
        f"results in {cfg.resolved_run_dir()}/eval.json",
    )


def cmd_sample(args) -> int:
    from lmpref.steps.train import step_sample

    cfg = _config(args)
    records = step_sample(cfg, Path(args.out), policy_path=args.policy, n=args.num_queries, split=args.split)
    valid = sum(sum(r["valid"]) for r in records)
    print(f"wrote {len(records)} queries x {cfg.sample.k} samples to {args.out} ({valid} valid responses)")
    return 0


def cmd_label(args) -> int:
    from lmpref.steps.train import step_label

    labels = step_label(
        Path(args.samples), Path(args.out), labeler=args.labeler, temperature=args.temperature, seed=args.seed
    )
    print(f"wrote {len(labels)} best-of-K labels to {args.out}")
    return 0


def cmd_train_reward(args) -> int:
    from lmpref.steps.train import step_train_reward

    cfg = _config(args)
    out = Path(args.out)
    m = step_train_reward(
        cfg,
        Path(args.labels),
        Path(args.samples) if args.samples else None,
        out,
        out.with_name(out.name + "_metrics.jsonl"),
        test_labels_path=Path(args.test_labels) if args.test_labels else None,
        columns=_columns(args),
        split=args.split,
    )
    print(json.dumps({k: v for k, v in m.items() if k.startswith(("accuracy", "chance", "n_"))}, indent=2))
    lo, hi = m["accuracy_after_ci"]
    where = (
        f"the test labels {args.test_labels}"
        if args.test_labels
        else f"held out by prompt, saved to {m['heldout_labels']}"
    )
    print(
        f"held-out accuracy: {m['accuracy_before']:.1%} untrained -> {m['accuracy_after']:.1%} trained "
        f"(95% CI {lo:.1%}-{hi:.1%}, n={m['n_heldout']} labels of {m['n_heldout_prompts']} prompts, {where}); "
        f"longer response wins: {m['accuracy_longer_wins']:.1%}"
        + (
            f"; the labeler without its noise (the ceiling): {m['accuracy_labeler_noise_free']:.1%}"
            if m.get("accuracy_labeler_noise_free") is not None
            else ""
        )
    )
    if m["n_heldout_prompts_also_trained"]:
        print(f"note: {m['n_heldout_prompts_also_trained']} held-out prompts are also in the training labels")
    print(f"saved the reward model to {out}")
    return 0


def _column_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("columns of outside preference data (default: the usual names)")
    for name, what in (
        ("prompt", "the prompt (prompt, instruction, query, question)"),
        ("chosen", "the preferred response (chosen)"),
        ("rejected", "the other response (rejected)"),
        ("a", "the first of two answers (answer_a, response_a)"),
        ("b", "the second of two answers (answer_b, response_b)"),
        ("label", "which answer is better: a/b, 0/1 or tie (label, preference, winner, choice)"),
        ("responses", "a list of responses, or of {response, score} objects (completions, responses)"),
        ("scores", "one score per response (scores, ratings, rewards, ranks), or the score key of each object"),
    ):
        g.add_argument(f"--{name}-col", help=what)
    g.add_argument("--ranks", action="store_true", help="the scores are ranks: lower is better")
    g.add_argument("--split", default="train", help="the split of a dataset folder or Hub dataset (default: train)")


def _columns(args):
    from lmpref.formats.preferences import Columns

    return Columns(
        prompt=args.prompt_col,
        chosen=args.chosen_col,
        rejected=args.rejected_col,
        a=args.a_col,
        b=args.b_col,
        label=args.label_col,
        responses=args.responses_col,
        scores=args.scores_col,
        ranks=args.ranks,
    )


def cmd_import_preferences(args) -> int:
    from lmpref.formats.preferences import read_preferences
    from lmpref.io import write_jsonl

    labels = read_preferences(args.source, _columns(args), split=args.split)
    write_jsonl(args.out, [label.to_json() for label in labels])
    ties = sum(label.tie for label in labels)
    prompts = len({label.extra.get("doc_id") for label in labels})
    print(
        f"wrote {len(labels)} best-of-K labels ({ties} ties) of {prompts} prompts from {args.source} to {args.out}; "
        f"train on them with: lmpref train-reward --labels {args.out} --out REWARD_MODEL"
    )
    return 0


def cmd_export_preferences(args) -> int:
    from lmpref.formats.preferences import read_preferences, trl_rows, write_preferences

    labels = read_preferences(args.source, _columns(args), split=args.split)
    rows = trl_rows(labels, conversational=args.format == "trl-chat")
    wrote = write_preferences(rows, args.out)
    print(f"wrote {len(rows)} {args.format} preference rows (one per chosen/rejected pair; ties left out) to {wrote}")
    return 0


def cmd_train_reward_human(args) -> int:
    from lmpref.steps.train import step_train_reward_human

    cfg = _config(args)
    out = Path(args.out)
    m = step_train_reward_human(
        cfg, out, Path(args.comparisons) if args.comparisons else None, out.with_name(out.name + "_metrics.jsonl")
    )
    lo, hi = m["accuracy_after_ci"]
    print(
        f"held-out accuracy on people's comparisons: {m['accuracy_before']:.1%} before -> {m['accuracy_after']:.1%} "
        "after "
        f"(95% CI {lo:.1%}-{hi:.1%}, n={m['n_heldout']} comparisons of {m['n_heldout_posts']} posts; "
        f"trained on {m['n_train']} of {m['n_train_posts']} other posts)"
    )
    print(f"saved the reward model to {out}")
    return 0


def cmd_sft(args) -> int:
    from lmpref.steps.train import step_sft

    cfg = _config(args)
    out = Path(args.out)
    m = step_sft(cfg, out, out.with_name(out.name + "_metrics.jsonl"))
    print(
        f"held-out loss per token: {m['heldout_loss_before']:.3f} -> {m['heldout_loss_after']:.3f} "
        f"(n={m['n_heldout']} pairs; trained on {m['n_train']})"
    )
    print(f"saved the supervised policy to {out}; start PPO from it with --set model.name={out}")
    return 0


def cmd_train_policy(args) -> int:
    from lmpref.config import ConfigError, check_resume, save_config
    from lmpref.steps.train import step_train_dpo, step_train_policy

    cfg = _config(args)
    if cfg.algo == "dpo" and not args.labels:
        raise ConfigError("train-policy --algo dpo learns from labels: give --labels FILE (best-of-K JSONL)")
    if cfg.algo != "dpo" and not args.reward_model:
        raise ConfigError(f"train-policy --algo {cfg.algo} needs --reward-model DIR (or --algo dpo --labels FILE)")
    run_dir = cfg.resolved_run_dir()
    if args.resume:
        grow = ("ppo.total_episodes", "rloo.total_episodes", "dpo.epochs")  # the run's settings, or train on for longer
        check_resume(cfg, run_dir / "config.json", args.allow_config_change, may_grow=grow)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.json")
    if cfg.algo == "dpo":
        state = step_train_dpo(cfg, Path(args.labels), run_dir, resume=args.resume)
        n, unit = state["step"], "steps"
    else:
        state = step_train_policy(cfg, Path(args.reward_model), run_dir, resume=args.resume)
        n, unit = state["update"], "updates"
    stopped = state.get("stopped")
    if not int(os.environ.get("RANK", "0") or 0):  # under a multi-process launch the main process reports
        print(
            f"stopped after {unit[:-1]} {n}: {stopped}"
            if stopped
            else f"saved the policy to {run_dir}/policy after {n} {unit}"
        )
        if cfg.algo == "dpo" and not stopped:
            print(
                f"held-out implicit-reward accuracy {state['heldout_accuracy_before']:.1%} -> "
                f"{state['heldout_accuracy']:.1%}"
            )
    return 3 if stopped else 0


def _named_paths(items: list[str]) -> dict[str, Path]:
    from lmpref.config import ConfigError

    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--compare {item!r} must look like NAME=PATH (e.g. sft=runs/cnndm/sft)")
        out[name] = Path(path)
    return out


def _best_of(items: list[str]) -> dict[str, tuple[int, str]]:
    """['bon16=16:ref'] -> {'bon16': (16, 'ref')}."""
    from lmpref.config import ConfigError

    out = {}
    for item in items:
        name, _, rest = item.partition("=")
        n, _, base = rest.partition(":")
        if not name or not n.isdigit() or int(n) < 1 or not base:
            raise ConfigError(
                f"--best-of {item!r} must look like NAME=N:BASE with N >= 1 and BASE ref, policy, a --compare name or "
                "a policy directory (e.g. bon16=16:ref)"
            )
        out[name] = (int(n), base)
    return out


def cmd_evaluate(args) -> int:
    from lmpref.config import ConfigError
    from lmpref.io import check_writable
    from lmpref.steps.evaluate import (
        step_enqueue_accuracy,
        step_enqueue_comparisons,
        step_evaluate,
        step_read_accuracy,
        step_read_human,
    )

    out = Path(args.out)
    store_run = args.store_run or f"eval-{out.resolve().parent.name}"
    if args.read_human:  # no sampling: read people's labels back into eval.json
        rows = step_read_human(db=args.db, run=store_run, eval_path=out)
        for row in rows:
            lo, hi = row["win_rate_ci"]
            print(
                f"  people: {row['a']} over {row['b']}: {row['win_rate']:.1%} (95% CI {lo:.1%}-{hi:.1%}, n={row['n']})"
            )
        print(f"{len(rows)} pairs of policies judged by people (store run {store_run!r}) written to {out}")
        for name, acc in step_read_accuracy(db=args.db, run=store_run, eval_path=out).items():
            lo, hi = acc["ci"]
            print(f"  people: {name} accurate {acc['accurate_share']:.1%} (95% CI {lo:.1%}-{hi:.1%}, n={acc['n']})")
        return 0
    if not args.policy:
        raise ConfigError("evaluate needs --policy (or --read-human to read people's labels back)")
    cfg = _config(args)
    check_writable(out)  # before the whole evaluation, not after it
    step_evaluate(
        cfg,
        Path(args.policy),
        Path(args.reward_model) if args.reward_model else None,
        out,
        compare=_named_paths(args.compare),
        best_of=_best_of(args.best_of),
    )
    if args.enqueue:
        pairs = [tuple(p.split(",", 1)) for p in args.pair] or None
        r = step_enqueue_comparisons(
            out.with_name("eval_samples.jsonl"), db=args.db, run=store_run, batch=args.batch, pairs=pairs, seed=cfg.seed
        )
        print(
            f"enqueued {r.created} comparisons for people in store run {store_run!r}, batch {r.batch!r} "
            f"({r.existing} already there); read them back with: lmpref evaluate --read-human --store-run {store_run} "
            f"--out {out}"
        )
    if args.enqueue_accuracy:
        r = step_enqueue_accuracy(
            out.with_name("eval_samples.jsonl"),
            db=args.db,
            run=store_run,
            batch=args.batch,
            n_queries=args.enqueue_accuracy,
            seed=cfg.seed,
        )
        print(
            f"enqueued {r.created} accuracy ratings for people in store run {store_run!r}, batch {r.batch!r} "
            f"({r.existing} already there); read them back with: lmpref evaluate --read-human --store-run {store_run} "
            f"--out {out}"
        )
    return 0


def cmd_report(args) -> int:
    from lmpref.eval.report import write_report

    print(f"wrote {write_report(args.run_dir, args.out)}")
    return 0


def cmd_generate(args) -> int:
    import torch

    from lmpref.core.batching import pad_left
    from lmpref.core.loading import load_causal_lm, load_tokenizer
    from lmpref.core.sampling import generate

    tok = load_tokenizer(args.policy)
    lm = load_causal_lm(args.policy).eval()
    prompts = args.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    torch.manual_seed(args.seed)
    ids, mask = pad_left([tok.encode(p, add_special_tokens=False) for p in prompts], tok.pad_token_id)
    out = generate(lm, ids, mask, response_length=args.length, temperature=args.temperature, pad_id=tok.pad_token_id)
    for p, o in zip(prompts, out.tolist()):
        print(json.dumps({"query": p, "response": tok.decode(o)}, ensure_ascii=False))
    return 0


def cmd_experiment(args) -> int:
    from lmpref.loop.experiment import run_experiment

    if args.mode:
        args.overrides.append(f"experiment.mode={args.mode}")
    cfg = _config(args)
    e = cfg.experiment
    print(
        f"[lmpref] {e.mode} experiment {cfg.preset} at scale {cfg.scale}, model {cfg.model.name}, seed {cfg.seed} -> "
        f"{cfg.resolved_run_dir()}"
    )
    return _finish(
        run_experiment(cfg, db=args.db, resume=args.resume),
        f"experiment finished: {cfg.resolved_run_dir()}/experiment.json",
    )


def cmd_label_worker(args) -> int:
    import os

    import httpx

    from lmpref.config import ConfigError
    from lmpref.loop.label_worker import WorkerConfig, WorkerError, run_worker

    token = args.token or os.environ.get("LMPREF_TOKEN")
    if not token:
        raise ConfigError(
            "label-worker needs a labeler token: --token or $LMPREF_TOKEN (make one with `lmpref labelers add NAME`)"
        )
    cfg = WorkerConfig(
        run=args.run,
        labeler=args.labeler,
        temperature=args.temperature,
        seed=args.seed,
        max_labels=args.max_labels,
        idle_timeout=args.idle_timeout,
    )
    with httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
        try:
            run_worker(client, cfg)
        except WorkerError as e:
            raise ConfigError(str(e)) from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmpref", description="Fine-tune language models from human preferences.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the main job: sample, label, train the reward model, PPO, evaluate")
    _config_args(p)
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its last finished step / checkpoint"
    )
    p.add_argument(
        "--algo",
        help="how the policy learns: ppo (reward model + PPO) | dpo (K-way DPO on the labels) | rloo "
        "(reward model + leave-one-out REINFORCE); sets `algo` (default: the preset's, else ppo)",
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: continue even though the config differs from the run's in keys that change results",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "experiment",
        help="offline / online / batched label collection through the label store, resumable, obeying the Andon cord",
    )
    _config_args(p)
    p.add_argument(
        "--mode",
        choices=["offline", "online", "batched"],
        help="sets experiment.mode (default: the preset's, else offline)",
    )
    p.add_argument(
        "--algo",
        help="how the policy learns: ppo (reward model + PPO) | dpo (K-way DPO on the labels) | rloo "
        "(reward model + leave-one-out REINFORCE); sets `algo` (default: the preset's, else ppo)",
    )
    p.add_argument("--db", help="label store URL (default: $LMPREF_DB or sqlite:///lmpref.db)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the experiment in --run-dir (after a crash, or once an admin cleared the Andon cord)",
    )
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser(
        "label-worker",
        help="a programmatic labeler that labels a run through the web app's JSON API, as a person would",
    )
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the labeling server (lmpref serve)")
    p.add_argument("--token", help="labeler token (default: $LMPREF_TOKEN)")
    p.add_argument("--run", required=True, help="run name in the label store")
    p.add_argument("--labeler", default="sentiment", help="sentiment | descriptiveness | ... (lmpref.eval.labelers)")
    p.add_argument(
        "--temperature", type=float, default=0.05, help="Boltzmann noise of the pick (0 = always the top score)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-labels", type=int, default=0, help="exit after this many labels (0 = no limit)")
    p.add_argument(
        "--idle-timeout", type=float, default=600.0, help="exit after this many seconds with nothing to label"
    )
    p.set_defaults(func=cmd_label_worker)

    p = sub.add_parser("sample", help="sample K continuations per query (sampling JSONL)")
    _config_args(p)
    p.add_argument("--policy", help="sample from this saved policy instead of the reference model")
    p.add_argument("--num-queries", type=int, help="default: sample.num_queries")
    p.add_argument("--split", default="train", choices=["train", "eval"])
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("label", help="label sampling JSONL with a programmatic labeler (best-of-K JSONL)")
    p.add_argument("samples")
    p.add_argument("--labeler", default="sentiment")
    p.add_argument(
        "--temperature", type=float, default=0.05, help="Boltzmann noise temperature (0 = always the best score)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_label)

    p = sub.add_parser(
        "train-reward", help="train a reward model on best-of-K labels (ours or OpenAI's released files)"
    )
    _config_args(p)
    p.add_argument(
        "--labels",
        required=True,
        help="labels: lmpref's, OpenAI's, or a preference dataset (file, folder or Hub id; see import-preferences)",
    )
    p.add_argument(
        "--samples",
        help="reference-model samples (sampling JSONL; token ids or text) to normalise on (default: "
        "the labels' own responses)",
    )
    p.add_argument(
        "--test-labels",
        help="held-out labels (any --labels input); default: hold out reward.holdout_fraction by prompt",
    )
    p.add_argument("--out", required=True)
    _column_args(p)
    p.set_defaults(func=cmd_train_reward)

    p = sub.add_parser(
        "import-preferences",
        help="a preference dataset (pairwise, labeled a/b, scored; JSONL, JSON, Parquet, CSV, a datasets folder or a "
        "Hub id) -> lmpref's best-of-K labels JSONL",
    )
    p.add_argument("source", help="a file, a folder (datasets.save_to_disk or data files) or a Hub dataset id")
    p.add_argument("--out", required=True, help="labels JSONL")
    _column_args(p)
    p.set_defaults(func=cmd_import_preferences)

    p = sub.add_parser(
        "export-preferences",
        help="labels (or any import-preferences input) -> TRL's preference format, as JSONL or a datasets folder",
    )
    p.add_argument("source", help="labels JSONL, or any input import-preferences reads")
    p.add_argument(
        "--format", choices=["trl", "trl-chat"], default="trl", help="trl: text; trl-chat: conversational messages"
    )
    p.add_argument("--out", required=True, help="FILE.jsonl, or a folder for datasets.load_from_disk")
    _column_args(p)
    p.set_defaults(func=cmd_export_preferences)

    p = sub.add_parser(
        "train-reward-human",
        help="train a reward model on people's TL;DR comparisons; held-out accuracy with a 95%% CI",
    )
    _config_args(p)
    p.add_argument(
        "--comparisons", help="JSONL of {input_text, candidate_0, candidate_1, choice} (default: the 929 shipped pairs)"
    )
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_train_reward_human)

    p = sub.add_parser("sft", help="supervised baseline: fine-tune on the task's (query, reference) pairs")
    _config_args(p)
    p.add_argument("--out", required=True, help="output policy directory (a starting policy for PPO)")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser(
        "train-policy", help="PPO or RLOO against a trained reward model, or DPO on a labels file (--algo)"
    )
    _config_args(p)
    p.add_argument("--reward-model", help="the trained reward model (ppo, rloo)")
    p.add_argument("--labels", help="best-of-K labels to learn from (dpo)")
    p.add_argument(
        "--algo",
        help="how the policy learns: ppo (reward model + PPO) | dpo (K-way DPO on the labels) | rloo "
        "(reward model + leave-one-out REINFORCE); sets `algo` (default: the preset's, else ppo)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in --run-dir, with the run's settings (training may run longer)",
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="with --resume: continue even though the config differs from the run's in keys that change results",
    )
    p.set_defaults(func=cmd_train_policy)

    p = sub.add_parser(
        "evaluate",
        help="win rates, reward, KL (and ROUGE, novelty, copying for summaries) of policies on held-out queries",
    )
    _config_args(p)
    p.add_argument("--policy", help="the trained policy (compared with the reference model)")
    p.add_argument("--reward-model")
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="another policy to evaluate on the same queries, e.g. sft=runs/cnndm/sft or a checkpoint (repeatable)",
    )
    p.add_argument(
        "--best-of",
        action="append",
        default=[],
        metavar="NAME=N:BASE",
        help="a best-of-N policy (no training): N samples of BASE (ref, policy, a --compare name or a policy "
        "directory), the one --reward-model scores highest kept, e.g. bon16=16:ref (repeatable)",
    )
    p.add_argument(
        "--out", required=True, help="eval.json path; eval_samples.jsonl and summary_eval.json go next to it"
    )
    p.add_argument(
        "--enqueue", action="store_true", help="also put pairs of responses in the label store for people to judge"
    )
    p.add_argument(
        "--read-human",
        action="store_true",
        help="read people's judgements back from the store into --out (no sampling)",
    )
    p.add_argument(
        "--pair",
        action="append",
        default=[],
        metavar="A,B",
        help="with --enqueue: only these pairs of policies (default: every pair)",
    )
    p.add_argument(
        "--enqueue-accuracy",
        type=int,
        default=0,
        metavar="N",
        help="also put every policy's responses to the first N queries in the label store "
        "for people to rate as accurate or not",
    )
    p.add_argument("--db", help="label store URL (default: $LMPREF_DB or sqlite:///lmpref.db)")
    p.add_argument("--store-run", help="run name in the label store (default: eval-<directory of --out>)")
    p.add_argument("--batch", default="eval", help="batch name in the label store (default: eval)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser(
        "report", help="one self-contained HTML page of a run: tables, plots, samples with copying marked"
    )
    p.add_argument("run_dir")
    p.add_argument("--out", help="default: RUN_DIR/report.html")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("generate", help="continue prompts (arguments or stdin lines) with a saved policy or any model")
    p.add_argument("--policy", default="smollm2-135m")
    p.add_argument("--prompt", action="append")
    p.add_argument("--length", type=int, default=24)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)

    try:  # the label store and web app register their own commands (they never import torch)
        from lmpref.cli.web import register
    except ImportError:
        pass
    else:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lmpref.config import ConfigError
    from lmpref.io import DataError, ModelLoadError
    from lmpref.store.errors import StoreError

    args = build_parser().parse_args(argv)
    try:
        one_process_unless_ppo(args.command)
        return args.func(args) or 0
    except (ConfigError, DataError, ModelLoadError, StoreError, FileExistsError) as e:
        print(f"lmpref: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resume = (
            " (finished steps and checkpoints are kept: run the same command with --resume to continue)"
            if hasattr(args, "resume")
            else ""
        )
        print(f"lmpref: interrupted{resume}", file=sys.stderr)
        return 130
    except Exception as e:
        err = _write_error(e)
        if err is None:
            raise
        print(
            f"lmpref: error: {err} writing {getattr(e, 'filename', None) or 'a file'}: free space or choose a writable "
            "--out / --run-dir; files are written whole (atomic renames), so --resume continues from the last "
            "finished step",
            file=sys.stderr,
        )
        return 2


_WRITE_ERRNOS = {errno.ENOSPC: "No space left on device", errno.EDQUOT: "Disk quota exceeded"}
_WRITE_ERRNOS |= {
    errno.EACCES: "Permission denied",
    errno.EROFS: "Read-only file system",
    errno.EPERM: "Permission denied",
}


def _write_error(e: BaseException) -> str | None:
    """The reason a write failed for lack of space or permission, or None for any other error.
    Writers outside Python's I/O (safetensors' Rust serializer) report the OS error only in their
    message ("... No space left on device (os error 28)"), so the chain of causes and the message
    are read too."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _WRITE_ERRNOS:
            return seen.strerror or _WRITE_ERRNOS[seen.errno]
        for code, reason in _WRITE_ERRNOS.items():
            if f"(os error {code})" in str(seen):
                return reason
        seen = seen.__cause__ or seen.__context__
    return None
