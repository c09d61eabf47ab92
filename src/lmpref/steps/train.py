"""The offline pipeline as steps that each read and write files in a run directory, so every step
runs and debugs alone (`lmpref sample | label | train-reward | train-policy | evaluate`) and `lmpref run`
is only their composition. A step whose output exists is skipped, so `run --resume` continues.

run_dir/
  config.json           the resolved configuration
  samples.jsonl         reference-model samples (sampling JSONL)
  labels.jsonl          best-of-K labels
  reward_model/         transformers sequence-classification model + tokenizer + lmpref_reward.json
  checkpoints/          resumable PPO checkpoints (update-NNNNNN/, `latest`)
  policy/               the final policy (causal LM + value_head.safetensors + tokenizer; with LoRA the
                        merged weights, and the adapter alone in policy/adapter/)
  metrics.jsonl, tb/    PPO metrics (JSONL and TensorBoard); reward_metrics.jsonl for the reward model
  eval.json             win rate vs the reference model, mean reward, KL, samples side by side
                        (`lmpref.steps.evaluate`, which also writes eval_samples.jsonl and summary_eval.json)
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from lmpref.config import ConfigError, RunConfig, check_resume, save_config
from lmpref.core.accel import full_model_state, load_optimizer_state
from lmpref.core.loading import load_causal_lm, load_tokenizer
from lmpref.core.models import PolicyWithValue, freeze_lower_layers
from lmpref.core.reward import RewardModel, new_reward_model
from lmpref.core.runtime import load_reference, setup
from lmpref.formats.cards import policy_card, reward_card
from lmpref.io import (
    atomic_dir,
    atomic_write_text,
    read_json_object,
    read_jsonl,
    require_keys,
    require_records,
    write_jsonl,
)
from lmpref.steps import hooks
from lmpref.steps.checkpoint import (
    TrainClock,
    checkpoint_fn,
    latest_checkpoint,
    read_policy_meta,
    save_policy,
    unwrapped,
    write_policy_meta,
)
from lmpref.steps.evaluate import step_evaluate
from lmpref.steps.guards import direction_guard, fingerprint, saved_reward_guard
from lmpref.steps.launch import check_supported, check_world
from lmpref.steps.metrics_log import MetricsLog
from lmpref.steps.preflight import preflight

# ---------------------------------------------------------------------------------------------
# Steps


def step_sample(
    cfg: RunConfig, out: Path, *, policy_path: str | None = None, n: int | None = None, split: str = "train"
) -> list[dict]:
    from lmpref.core.sampling import sample_records
    from lmpref.tasks import make_query_source

    preflight(cfg)
    device = setup(cfg)
    tok = load_tokenizer(cfg.model.name, cfg.model.cache_dir)
    lm = load_causal_lm(policy_path or cfg.model.name, cfg.model.cache_dir, cfg.model.dtype).to(device)
    queries = make_query_source(tok, cfg.task, split, cfg.model.name).sample(
        n or cfg.sample.num_queries, f"sample-{cfg.seed}"
    )
    policy_id = f"policy:{policy_path}" if policy_path else f"ref:{cfg.model.name}"
    records = sample_records(
        lm, tok, queries, cfg.task, k=cfg.sample.k, batch_size=cfg.sample.batch_size, seed=cfg.seed, policy_id=policy_id
    )
    write_jsonl(out, records)
    return records


def step_label(samples: Path, out: Path, *, labeler: str, temperature: float, seed: int) -> list[dict]:
    from lmpref.eval.labelers import label_records, make_labeler

    chosen = make_labeler(labeler)
    rows = list(read_jsonl(samples))
    require_records(samples, rows, "samples")
    for lineno, rec in rows:
        require_keys(samples, lineno, rec, ("id", "query", "responses"), "sampling")
    labels = label_records([r for _, r in rows], chosen, temperature=temperature, seed=seed)
    write_jsonl(out, labels)
    return labels


def step_train_reward(
    cfg: RunConfig,
    labels_path: Path,
    samples_path: Path | None,
    out: Path,
    log_path: Path | None = None,
    *,
    test_labels_path: Path | None = None,
    columns=None,
    split: str = "train",
) -> dict:
    """A reward model on best-of-K labels from any preference data `lmpref.formats.preferences`
    reads (or OpenAI's token-id files), cut to the config's lengths (the end of a query, the start of
    a response). Held out: `test_labels_path`, else a split by prompt (`doc_id`) that is saved beside
    `out` (OUT_heldout_labels.jsonl). Normalised on `samples_path` (token ids or text) or, without
    one, on the labels' own responses. Reports held-out accuracy with its 95% Wilson interval, the
    untrained model's, a longer-response-wins baseline's and, for a programmatic labeler's labels, the
    labeler's own without its noise (the ceiling)."""
    from dataclasses import replace

    from lmpref.core.reward import accuracy, norm_pairs_from_records, split_labels, train_reward, truncate_labels
    from lmpref.eval.labelers import noise_free_accuracy
    from lmpref.eval.winrate import wilson_interval

    preflight(cfg)
    device = setup(cfg)
    trunk = cfg.model.reward_model or cfg.model.name
    tok = load_tokenizer(trunk, cfg.model.cache_dir)
    labels, records = _read_any_labels(labels_path, tok, out.with_name(out.name + "_labels.jsonl"), columns, split)
    test = None
    if test_labels_path is not None:
        test, test_records = _read_any_labels(
            test_labels_path, tok, out.with_name(out.name + "_test_labels.jsonl"), columns, split
        )
        train, heldout, kept = labels, test, test_records
    else:
        train, heldout = split_labels(labels, cfg.reward.holdout_fraction, cfg.seed)
        index = {id(c): i for i, c in enumerate(labels)}
        kept = [records[index[id(c)]] for c in heldout] if records is not None else None
        write_jsonl(
            out.with_name(out.name + "_heldout_labels.jsonl"),
            kept if kept is not None else [_ids_record(c, i) for i, c in enumerate(heldout)],
        )
    longer = longer_wins(heldout)
    ceiling = noise_free_accuracy(kept) if kept else None
    q_len, r_len = cfg.task.query_length, cfg.task.response_length
    labels = truncate_labels(labels, q_len, r_len)
    heldout_cut = truncate_labels(heldout, q_len, r_len)
    if samples_path is not None:
        rows = list(read_jsonl(samples_path))
        require_records(samples_path, rows, "samples")
        norm_records = [_sample_ids(samples_path, lineno, rec, tok, q_len, r_len) for lineno, rec in rows]
        norm_pairs = norm_pairs_from_records(norm_records, cfg.reward.norm_samples, cfg.seed)
    else:  # the labels' own responses (every response the reward model will be asked about)
        norm_pairs = [(c.query_ids, r) for c in labels for r in c.response_ids]
        random.Random(f"norm-{cfg.seed}").shuffle(norm_pairs)
        norm_pairs = norm_pairs[: cfg.reward.norm_samples]
    rm = new_reward_model(cfg, trunk, tok, device)
    reward_cfg = cfg.reward
    if test is not None:  # train on every label; the test file is the held-out set
        reward_cfg = replace(cfg.reward, holdout_fraction=0.0)
        before = accuracy(rm, heldout_cut, tok.pad_token_id)
    metrics = train_reward(
        rm, labels, norm_pairs, reward_cfg, pad_id=tok.pad_token_id, seed=cfg.seed, log=_fresh_log(log_path)
    )
    if test is not None:
        metrics.update(
            n_heldout=len(heldout_cut),
            accuracy_before=before,
            accuracy_after=accuracy(rm, heldout_cut, tok.pad_token_id),
            chance=sum(1 / len(c.response_ids) for c in heldout_cut) / max(len(heldout_cut), 1),
        )
    n = metrics["n_heldout"]
    hits = round(metrics["accuracy_after"] * n) if n else 0
    train_docs = {c.doc_id for c in train if c.doc_id is not None}
    metrics.update(
        {
            "accuracy_after_ci": list(wilson_interval(hits, n)) if n else [float("nan"), float("nan")],
            "accuracy_longer_wins": longer,
            "accuracy_labeler_noise_free": ceiling,
            "n_heldout_prompts": len({c.doc_id if c.doc_id is not None else f"#{i}" for i, c in enumerate(heldout)}),
            "n_heldout_prompts_also_trained": len({c.doc_id for c in heldout if c.doc_id in train_docs}),
            "labels": str(labels_path),
            "test_labels": None if test_labels_path is None else str(test_labels_path),
            "heldout_labels": None if test is not None else str(out.with_name(out.name + "_heldout_labels.jsonl")),
            "trunk": trunk,
            "seed": cfg.seed,
            "query_length": q_len,
            "response_length": r_len,
            "holdout_fraction": reward_cfg.holdout_fraction,
            "fingerprint": fingerprint(rm, norm_pairs, tok.pad_token_id),
        }
    )
    rm.save(out, extra=metrics, tokenizer=tok, card=reward_card(metrics))
    return metrics


def _read_any_labels(path: Path, tok, converted: Path, columns, split: str):
    """(choices, label records parallel to them or None). lmpref's own label JSONL and OpenAI's
    token-id files go to the reward model's reader as they are; anything else is converted by
    `lmpref.formats.preferences` and written to `converted` (the exact labels trained on)."""
    from lmpref.core.reward import read_labels
    from lmpref.formats.preferences import native_label_rows, read_preferences

    rows = native_label_rows(path)
    if rows is not None:
        texts = "sample0" not in rows[0]  # OpenAI's files hold token ids only
        return read_labels(path, tok), [r for r in rows if not r.get("tie")] if texts else None
    records = read_preferences(path, columns, split=split)
    write_jsonl(converted, [r.to_json() for r in records])
    return read_labels(converted, tok), [r.to_json() for r in records if not r.tie]


def _ids_record(c, i: int) -> dict:
    return {"id": f"heldout-{i}", "query_ids": c.query_ids, "response_ids": c.response_ids, "best": c.best} | (
        {"doc_id": c.doc_id} if c.doc_id is not None else {}
    )


def _sample_ids(path: Path, lineno: int, rec: dict, tok, q_len: int, r_len: int) -> dict:
    """A samples record as token ids (tokenising its text where it has none), cut like the labels."""
    if rec.get("query_ids") is None:
        require_keys(path, lineno, rec, ("query",), "sampling")
        rec = {**rec, "query_ids": tok.encode(rec["query"], add_special_tokens=False)}
    if rec.get("response_ids") is None:
        require_keys(path, lineno, rec, ("responses",), "sampling")
        rec = {**rec, "response_ids": [tok.encode(r, add_special_tokens=False) for r in rec["responses"]]}
    q = rec["query_ids"][-q_len:] if q_len > 0 else rec["query_ids"]
    return {"query_ids": q, "response_ids": [r[:r_len] if r_len > 0 else r for r in rec["response_ids"]]}


def longer_wins(labels) -> float:
    """Held-out accuracy of "the longest response (in tokens) is best"; a tie in length counts as a
    guess among the longest."""
    if not labels:
        return float("nan")
    score = 0.0
    for c in labels:
        lengths = [len(r) for r in c.response_ids]
        longest = [i for i, n in enumerate(lengths) if n == max(lengths)]
        score += (c.best in longest) / len(longest)
    return score / len(labels)


def _config_dict(cfg: RunConfig) -> dict:
    return json.loads(json.dumps(cfg.to_dict(), default=str))


def _fresh_log(log_path: Path | None) -> MetricsLog | None:
    """A step's metrics log, emptied first: a step redone after a crash (`run --resume`) logs its
    steps once, not [1, 2, 1, 2]."""
    if log_path is None:
        return None
    log_path.unlink(missing_ok=True)
    return MetricsLog(log_path)


def step_sft(cfg: RunConfig, out: Path, log_path: Path | None = None) -> dict:
    """Supervised baseline: fine-tune `model.name` on the task's (query, reference) pairs of the
    train split; held-out loss on the eval split's pairs. `out` is a policy directory that can be
    the starting policy and reference model of PPO (`--set model.name=<out>`)."""
    from lmpref.core.sft import target_ids, train_sft
    from lmpref.tasks.summarization import SummarizationSource

    if cfg.model.lora_rank:
        raise ConfigError("sft trains every weight; LoRA is for the policy of PPO, RLOO and DPO: set model.lora_rank=0")
    device = setup(cfg)
    tok = load_tokenizer(cfg.model.name, cfg.model.cache_dir)
    pairs = {}
    for split in ("train", "eval"):
        queries = SummarizationSource(tok, cfg.task, split).queries(with_reference=True)
        pairs[split] = [(q.ids, target_ids(tok, q.extra["reference"], cfg.task.response_length)) for q in queries]
    heldout = pairs["eval"][: cfg.sft.eval_pairs]
    policy = PolicyWithValue(load_causal_lm(cfg.model.name, cfg.model.cache_dir, cfg.model.dtype)).to(device)
    freeze_lower_layers(policy.lm, cfg.model.trainable_layers)
    metrics = train_sft(
        policy,
        pairs["train"],
        heldout,
        cfg.sft,
        pad_id=tok.pad_token_id,
        query_length=cfg.task.query_length,
        seed=cfg.seed,
        log=_fresh_log(log_path),
    )
    metrics["start"] = cfg.model.name
    with atomic_dir(out) as tmp:
        policy.save(tmp)
        tok.save_pretrained(tmp)
        atomic_write_text(tmp / "sft_metrics.json", json.dumps(metrics, indent=2))
        card = policy_card(_config_dict(cfg), metrics, algorithm="supervised fine-tuning on the task's references")
        atomic_write_text(tmp / "README.md", card)
    return metrics


def step_train_reward_human(
    cfg: RunConfig, out: Path, comparisons: Path | None = None, log_path: Path | None = None
) -> dict:
    """A reward model on people's TL;DR comparisons (OpenAI's summarize-from-feedback pairs;
    default: the 929 shipped ones), with held-out accuracy and its 95% Wilson interval.

    The posts are cut to `task.query_length` like the task's queries. The hold-out split is by post
    (`reward.split_labels` on each record's `doc_id`): no post is on both sides. The gain and bias
    are set on the compared summaries themselves: there are no samples of our own reference model here."""
    from lmpref.core.reward import read_labels, split_labels, train_reward
    from lmpref.eval.winrate import wilson_interval
    from lmpref.tasks.summarization import TLDR_SUFFIX, read_tldr_comparisons

    device = setup(cfg)
    trunk = cfg.model.reward_model or cfg.model.name
    tok = load_tokenizer(trunk, cfg.model.cache_dir)
    budget = cfg.task.query_length - len(tok.encode(TLDR_SUFFIX, add_special_tokens=False))
    records = read_tldr_comparisons(comparisons, tokenizer=tok, max_tokens=budget)
    labels_path = out.with_name(out.name + "_labels.jsonl")
    write_jsonl(labels_path, records)  # the exact labels trained on, in our best-of-K schema
    labels = read_labels(labels_path, tok)
    # The split train_reward will make (the same function, fraction and seed), counted for the record.
    train, heldout = split_labels(labels, cfg.reward.holdout_fraction, cfg.seed)
    posts = {
        "n_train_posts": len({label.doc_id for label in train}),
        "n_heldout_posts": len({label.doc_id for label in heldout}),
    }
    print(
        f"[lmpref] split by post: {posts['n_train_posts']} posts / {len(train)} comparisons to train on, "
        f"{posts['n_heldout_posts']} posts / {len(heldout)} comparisons held out"
    )
    norm_pairs = [(label.query_ids, r) for label in labels for r in label.response_ids]
    random.Random(f"norm-{cfg.seed}").shuffle(norm_pairs)
    rm = new_reward_model(cfg, trunk, tok, device)
    metrics = train_reward(
        rm,
        labels,
        norm_pairs[: cfg.reward.norm_samples],
        cfg.reward,
        pad_id=tok.pad_token_id,
        seed=cfg.seed,
        log=_fresh_log(log_path),
    )
    hits = round(metrics["accuracy_after"] * metrics["n_heldout"])
    metrics.update(
        {
            "accuracy_after_ci": list(wilson_interval(hits, metrics["n_heldout"])),
            "n_labels": len(records),
            **posts,
            "labels": str(labels_path),
            "trunk": trunk,
            "query_length": cfg.task.query_length,
            "seed": cfg.seed,
            "holdout_fraction": cfg.reward.holdout_fraction,
            "fingerprint": fingerprint(rm, norm_pairs, tok.pad_token_id),
        }
    )
    rm.save(out, extra=metrics, tokenizer=tok, card=reward_card(metrics))
    return metrics


def _then(log, after):
    """`log`, then `after` with the same row (when given)."""
    if after is None:
        return log

    def both(row: dict) -> None:
        log(row)
        after(row)

    return both


def check_reward_model(cfg: RunConfig, reward_path: Path) -> tuple[dict, str | None]:
    """The one pre-PPO check of a saved reward model (`lmpref.steps.guards.saved_reward_guard`)
    with this config's margin, hold-out fraction and seed."""
    return saved_reward_guard(reward_path, cfg.experiment.reward_guard_margin, cfg.reward.holdout_fraction, cfg.seed)


def _start_policy(cfg: RunConfig, ckpt: Path | None, device) -> PolicyWithValue:
    """The policy to train: the checkpoint's when resuming, else the base model's, with only its top
    `model.trainable_layers` blocks trainable. With `model.lora_rank` the base model always, with fresh
    LoRA adapters or the checkpoint's (`lmpref.core.lora`) and the checkpoint's value head."""
    from lmpref.core import lora

    if cfg.model.lora_rank:
        base = load_causal_lm(cfg.model.name, cfg.model.cache_dir, cfg.model.dtype, cfg.model.attn_implementation)
        policy = PolicyWithValue(base)
        for p in policy.lm.parameters():
            p.requires_grad_(False)
        adapter = ckpt / lora.ADAPTER_DIR if ckpt else None
        if ckpt and not (adapter / "adapter_config.json").exists():
            raise ConfigError(f"{ckpt} holds no LoRA adapter: resume it with model.lora_rank=0, or start a new run")
        lora.adapt_policy(policy, cfg.model, adapter)
        if ckpt:
            from safetensors.torch import load_file

            policy.value_head.load_state_dict(load_file(str(ckpt / "value_head.safetensors")))
        return policy.to(device)
    policy = (
        PolicyWithValue.load(ckpt, dtype=cfg.model.dtype)
        if ckpt
        else PolicyWithValue(
            load_causal_lm(cfg.model.name, cfg.model.cache_dir, cfg.model.dtype, cfg.model.attn_implementation)
        )
    ).to(device)
    freeze_lower_layers(policy.lm, cfg.model.trainable_layers)
    return policy


def _reference(cfg: RunConfig, policy, device):
    """ρ: with LoRA the policy's own base with its adapters off (no second copy of the model),
    else the base model loaded and frozen."""
    from lmpref.core.lora import AdaptersOff

    return AdaptersOff(unwrapped(policy)) if cfg.model.lora_rank else load_reference(cfg, device)


def step_train_policy(
    cfg: RunConfig,
    reward_path: Path,
    run_dir: Path,
    *,
    resume: bool = False,
    should_stop=None,
    check_reward: bool = True,
) -> dict:
    """PPO (or RLOO with `algo = rloo`) into run_dir (checkpoints/, metrics.jsonl, policy/).
    `should_stop()` is read between updates. Each update's metrics row, once logged and before that
    update's checkpoint is written, is announced as the point `update` (`lmpref.steps.hooks`).

    Guards: before PPO, the reward model as saved (`check_reward_model`; the experiment loop has
    already run it on the round's model and passes check_reward=False); between updates, the
    direction guard on the metrics rows (`direction_guard`: the reward model's score of the policy's
    samples falling while the score PPO maximises rises). Either stops the run with the reason."""
    from accelerate import Accelerator

    from lmpref.core.ppo import make_optimizer, train_policy
    from lmpref.core.rloo import train_rloo
    from lmpref.tasks import make_query_source

    preflight(cfg)
    if check_reward:
        _, reason = check_reward_model(cfg, reward_path)
        if reason:
            return {"update": 0, "stopped": reason}
    clock = TrainClock()
    rows: list[dict] = []  # this run's metrics rows, for the direction guard

    def keep_row(row: dict) -> None:
        rows.append(row)
        hooks.point("update", row["step"])

    def stop_or_guard() -> str | None:
        return (should_stop() if should_stop else None) or direction_guard(rows, cfg.ppo.direction_window)

    setup(cfg)
    # One process: a no-op wrapper. Under `accelerate launch`: DDP (or DeepSpeed / FSDP) from its config.
    accelerator = Accelerator()
    check_world(accelerator)
    device = accelerator.device
    tok = load_tokenizer(cfg.model.name, cfg.model.cache_dir)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is None and resume:
        print(f"[lmpref] no checkpoint in {run_dir}/checkpoints: starting PPO from the beginning")
    if ckpt is None:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    elif (run_dir / "metrics.jsonl").exists():
        rows.extend(r for _, r in read_jsonl(run_dir / "metrics.jsonl"))
    policy = _start_policy(cfg, ckpt, device)
    ref = _reference(cfg, policy, device)
    rm = RewardModel.load(reward_path, cfg.model.dtype).to(device).eval()
    rm.requires_grad_(False)
    rloo = cfg.algo == "rloo"
    if rloo:
        if accelerator.num_processes > 1:
            raise ConfigError("--algo rloo runs in one process: launch it plainly, not under accelerate / torchrun")
        policy.value_head.requires_grad_(False)  # RLOO has no value function
        optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=cfg.rloo.lr, eps=1e-5)
    else:
        optimizer = make_optimizer([p for p in policy.parameters() if p.requires_grad], cfg.ppo)
    check_supported(accelerator)
    policy, optimizer = accelerator.prepare(policy, optimizer)  # DDP wraps; FSDP2 shards in place
    state = None
    if ckpt:
        load_optimizer_state(policy, optimizer, torch.load(ckpt / "optimizer.pt", map_location="cpu"))
        state = json.loads((ckpt / "state.json").read_text())
        clock.resume(state)
        print(f"[lmpref] resuming PPO from {ckpt} (update {state['update']})")
    source = make_query_source(tok, cfg.task, "train", cfg.model.name)
    log = (
        _then(MetricsLog(run_dir / "metrics.jsonl", run_dir / "tb"), keep_row) if accelerator.is_main_process else None
    )
    # RLOO and PPO are peers with one signature; only PPO runs on several processes (checked above).
    trainer, algo_cfg, tag = (train_rloo, cfg.rloo, "rloo") if rloo else (train_policy, cfg.ppo, "ppo")
    state = trainer(
        policy,
        ref,
        rm,
        tok,
        lambda update, n: source.sample(n, f"{tag}-{cfg.seed}-{update}"),
        algo_cfg,
        cfg.task,
        seed=cfg.seed,
        device=device,
        state=state,
        optimizer=optimizer,
        log=log,
        checkpoint=clock.wrap(checkpoint_fn(run_dir, policy, tok, accelerator.is_main_process)),
        should_stop=stop_or_guard,
        forward_batch=cfg.sample.batch_size,
        **({} if rloo else {"accelerator": accelerator}),
    )
    weights = full_model_state(policy) if not state.get("stopped") else None  # collective: every process
    if weights is not None and accelerator.is_main_process:
        with atomic_dir(run_dir / "policy") as tmp:
            save_policy(weights, tmp, like=unwrapped(policy))
            tok.save_pretrained(tmp)
            atomic_write_text(tmp / "README.md", policy_card(_config_dict(cfg), state, reward_model=str(reward_path)))
            write_policy_meta(
                tmp,
                algo=cfg.algo,
                labels=_reward_labels(reward_path),
                episodes=state["update"] * algo_cfg.batch_size,
                seconds=clock.seconds(),
                counts="(query, response) samples trained on: updates x batch_size",
            )
    return state


def _reward_meta(reward_path: Path) -> dict:
    """What `train-reward` saved beside a reward model (lmpref_reward.json), or {} when it is absent
    or unreadable (a reward model from elsewhere)."""
    return read_json_object(reward_path / "lmpref_reward.json")


def _reward_labels(reward_path: Path) -> int | None:
    """The labels a saved reward model was trained on (`n_train` in its lmpref_reward.json), else None."""
    n = _reward_meta(reward_path).get("n_train")
    return n if isinstance(n, int) else None


def _labels_digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def cached_reference_logprobs(cfg: RunConfig, ref, labels, labels_path: Path, tok, run_dir: Path, trunk=None) -> list:
    """log ρ(y|x) of every labeled response, computed once and kept in run_dir/dpo_ref_logprobs.json
    (reused on --resume while the labels file, the reference model and the temperature are the same)."""
    from lmpref.core.dpo import reference_logprobs

    path = run_dir / "dpo_ref_logprobs.json"
    key = {"labels": _labels_digest(labels_path), "model": cfg.model.name, "temperature": cfg.task.temperature}
    if path.exists():
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            saved = {}
        if saved.get("key") == key and len(saved.get("logprobs", [])) == len(labels):
            return saved["logprobs"]
    lp = reference_logprobs(ref, labels, tok.pad_token_id, cfg.task.temperature, cfg.sample.batch_size, trunk)
    atomic_write_text(path, json.dumps({"key": key, "logprobs": lp}))
    return lp


def _dpo_trunk(cfg: RunConfig, policy, ref, labels, pad_id: int):
    """The shared frozen trunk's output for every labeled pair (`lmpref.core.dpo.TrunkCache`), when
    the policy and ρ share lower blocks and it fits in `dpo.trunk_cache_mb`; else None."""
    from lmpref.core.dpo import TrunkCache, flat_pairs
    from lmpref.core.trunk import shared_depth

    depth = shared_depth(policy.lm, ref.lm) if cfg.dpo.trunk_cache_mb > 0 else 0
    if depth == 0:
        return None
    pairs, _ = flat_pairs(labels)
    need = TrunkCache.nbytes(pairs, policy.lm.config.hidden_size) / 2**20
    if need > cfg.dpo.trunk_cache_mb:
        print(
            f"[lmpref] the shared trunk's output for {len(pairs)} responses needs {need:.0f} MB > dpo.trunk_cache_mb="
            f"{cfg.dpo.trunk_cache_mb}: every DPO step runs the whole model (raise dpo.trunk_cache_mb to cache it)"
        )
        return None
    trunk = TrunkCache(depth)
    trunk.fill(ref.lm, pairs, pad_id, cfg.sample.batch_size)
    return trunk


def step_train_dpo(
    cfg: RunConfig,
    labels_path: Path,
    run_dir: Path,
    *,
    resume: bool = False,
    should_stop=None,
    start: Path | None = None,
) -> dict:
    """K-way DPO on a best-of-K labels file into run_dir (checkpoints/, metrics.jsonl + tb/,
    dpo_ref_logprobs.json, policy/, dpo.json), no reward model. The labels are split as the reward
    model splits them (`split_labels` with `dpo.holdout_fraction` and the seed); the held-out share
    measures the implicit reward's accuracy. `should_stop()` is read between steps; each step's
    metrics row, once logged and before its checkpoint, is announced as the point `update`.
    `start`: a policy folder to start from when run_dir has no checkpoint (iterative DPO: the previous
    round's policy), with a fresh optimizer; ρ is the base model all the same. The policy's episodes
    and minutes (`write_policy_meta`) add to those `start` recorded."""
    from lmpref.core.dpo import train_dpo
    from lmpref.core.reward import read_labels, split_labels

    preflight(cfg)
    clock = TrainClock()
    device = setup(cfg)
    tok = load_tokenizer(cfg.model.name, cfg.model.cache_dir)
    labels = read_labels(labels_path, tok)
    train, heldout = split_labels(labels, cfg.dpo.holdout_fraction, cfg.seed)
    if not train:
        raise ConfigError(
            f"{labels_path}: no labels left for DPO after the hold-out split; collect more labels or lower "
            "dpo.holdout_fraction"
        )
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is None and resume:
        print(f"[lmpref] no checkpoint in {run_dir}/checkpoints: starting DPO from the beginning")
    if ckpt is None:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    policy = _start_policy(cfg, ckpt or start, device)
    ref = _reference(cfg, policy, device)
    policy.value_head.requires_grad_(False)  # no value function: DPO trains the LM alone
    trunk = _dpo_trunk(cfg, policy, ref, labels, tok.pad_token_id)
    ref_lp = cached_reference_logprobs(cfg, ref, labels, labels_path, tok, run_dir, trunk)
    position = {id(c): i for i, c in enumerate(labels)}
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=cfg.dpo.lr)
    state = None
    if ckpt:
        load_optimizer_state(policy, optimizer, torch.load(ckpt / "optimizer.pt", map_location="cpu"))
        state = json.loads((ckpt / "state.json").read_text())
        clock.resume(state)
        print(f"[lmpref] resuming DPO from {ckpt} (step {state['step']})")
    metrics_log = MetricsLog(run_dir / "metrics.jsonl", run_dir / "tb")

    def log(row: dict) -> None:
        metrics_log(row)
        hooks.point("update", row["step"])

    state = train_dpo(
        policy,
        train,
        [ref_lp[position[id(c)]] for c in train],
        heldout,
        [ref_lp[position[id(c)]] for c in heldout],
        cfg.dpo,
        pad_id=tok.pad_token_id,
        temperature=cfg.task.temperature,
        seed=cfg.seed,
        state=state,
        optimizer=optimizer,
        log=log,
        checkpoint=clock.wrap(checkpoint_fn(run_dir, policy, tok, True)),
        should_stop=should_stop,
        trunk=trunk,
    )
    if not state.get("stopped"):
        with atomic_dir(run_dir / "policy") as tmp:
            save_policy(policy.state_dict(), tmp, like=policy)
            tok.save_pretrained(tmp)
            prior = read_policy_meta(start) if start else {}
            write_policy_meta(
                tmp,
                algo="dpo",
                labels=len(train),
                episodes=int(prior.get("episodes") or 0) + cfg.dpo.epochs * sum(len(c.response_ids) for c in train),
                seconds=float(prior.get("train_minutes") or 0) * 60 + clock.seconds(),
                counts="(query, response) pairs the loss scored: epochs x the K responses of each trained label",
            )
        summary = {**state, "n_train": len(train), "n_heldout": len(heldout), "labels": str(labels_path)}
        atomic_write_text(run_dir / "dpo.json", json.dumps(summary, indent=2))
    return state


def run_offline(cfg: RunConfig, *, resume: bool = False, allow_config_change: bool = False) -> dict:
    """The main job: sample from ρ, label, train the reward model, PPO (or RLOO), evaluate; with
    `algo = dpo`: sample, label, DPO on the labels, evaluate. A resume must keep the run's config
    (`check_resume`), or its files would mix two runs."""
    run_dir = cfg.resolved_run_dir()
    if resume:
        check_resume(cfg, run_dir / "config.json", allow_config_change)
    preflight(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not resume and any(run_dir.iterdir()):
        raise FileExistsError(f"{run_dir} is not empty: pass --resume to continue that run, or choose --run-dir")
    save_config(cfg, run_dir / "config.json")
    samples, labels, rm_dir = run_dir / "samples.jsonl", run_dir / "labels.jsonl", run_dir / "reward_model"
    if not samples.exists():
        print(f"[1/5] sampling {cfg.sample.num_queries} queries x {cfg.sample.k} from {cfg.model.name}")
        step_sample(cfg, samples)
    if not labels.exists():
        print(f"[2/5] labeling with the {cfg.labeler.name} labeler (T={cfg.labeler.temperature})")
        n = len(
            step_label(samples, labels, labeler=cfg.labeler.name, temperature=cfg.labeler.temperature, seed=cfg.seed)
        )
        print(f"      {n} labels")
    if cfg.algo == "dpo":  # no reward model: the policy learns from the labels themselves
        if not (run_dir / "policy" / "config.json").exists():
            print("[3/4] DPO on the labels")
            state = step_train_dpo(cfg, labels, run_dir, resume=True)
            if state.get("stopped"):
                return {"stopped": state["stopped"]}
            print(
                f"      held-out implicit-reward accuracy {state['heldout_accuracy_before']:.1%} -> "
                f"{state['heldout_accuracy']:.1%}"
            )
        print("[4/4] evaluating on held-out queries")
        return step_evaluate(cfg, run_dir / "policy", None, run_dir / "eval.json")
    if not (rm_dir / "config.json").exists():
        print("[3/5] training the reward model")
        step_train_reward(cfg, labels, samples, rm_dir, run_dir / "reward_metrics.jsonl")
    seen, reason = check_reward_model(cfg, rm_dir)  # measure what PPO will load: the saved model, reloaded
    if "accuracy" in seen:
        print(
            f"      held-out accuracy of the saved reward model {seen['accuracy']:.1%} (chance {seen['chance']:.1%}, "
            f"n={seen['n_heldout']})"
        )
        ceiling = _reward_meta(rm_dir).get("accuracy_labeler_noise_free")
        if ceiling is not None:
            print(f"      the labeler without its noise picks the label {ceiling:.1%} (the ceiling)")
    if reason:
        return {"stopped": reason}
    if not (run_dir / "policy" / "config.json").exists():
        print(f"[4/5] {cfg.algo.upper()}")
        state = step_train_policy(cfg, rm_dir, run_dir, resume=True, check_reward=False)
        if state.get("stopped"):
            return {"stopped": state["stopped"]}
    print("[5/5] evaluating on held-out queries")
    return step_evaluate(cfg, run_dir / "policy", rm_dir, run_dir / "eval.json")
