"""The offline pipeline as steps that each read and write files in a run directory, so every step
runs and debugs alone (`lmpref sample | label | train-reward | train-policy | evaluate`) and `lmpref run`
is only their composition. A step whose output exists is skipped, so `run --resume` continues.

run_dir/
  config.json           the resolved configuration
  samples.jsonl         reference-model samples (sampling JSONL)
  labels.jsonl          best-of-K labels
  reward_model/         transformers sequence-classification model + tokenizer + lmpref_reward.json
  checkpoints/          resumable PPO checkpoints (update-NNNNNN/, `latest`)
  policy/               the final policy (causal LM + value_head.safetensors + tokenizer)
  metrics.jsonl, tb/    PPO metrics (JSONL and TensorBoard); reward_metrics.jsonl for the reward model
  eval.json             win rate vs the reference model, mean reward, KL, samples side by side
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from lmpref.config import RunConfig, save_config
from lmpref.io import DataError, append_jsonl, atomic_write_text, read_jsonl, write_jsonl
from lmpref.models import PolicyWithValue, RewardModel, freeze_lower_layers, load_causal_lm, load_tokenizer


def setup(cfg: RunConfig) -> torch.device:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the "newly initialized score.weight" report is expected here
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class MetricsLog:
    """Metrics as JSONL (one object per step) and TensorBoard scalars, namespaced like `objective/kl`."""

    def __init__(self, path: Path, tb_dir: Path | None = None):
        self.path = path
        self.tb = None
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(tb_dir))

    def __call__(self, record: dict) -> None:
        append_jsonl(self.path, record)
        if self.tb is not None:
            step = int(record.get("step", 0))
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()


def _ref_model(cfg: RunConfig, device) -> PolicyWithValue:
    ref = PolicyWithValue(load_causal_lm(cfg.model.name, cfg.model.cache_dir, cfg.model.dtype, cfg.model.attn_implementation)).to(device).eval()
    ref.requires_grad_(False)
    return ref


# ---------------------------------------------------------------------------------------------
# Steps


def step_sample(cfg: RunConfig, out: Path, *, policy_path: str | None = None, n: int | None = None, split: str = "train") -> list[dict]:
    from lmpref.sampling import sample_records
    from lmpref.tasks import make_query_source

    device = setup(cfg)
    tok = load_tokenizer(cfg.model.name, cfg.model.cache_dir)
    lm = load_causal_lm(policy_path or cfg.model.name, cfg.model.cache_dir, cfg.model.dtype).to(device)
    queries = make_query_source(tok, cfg.task, split).sample(n or cfg.sample.num_queries, f"sample-{cfg.seed}")
    policy_id = f"policy:{policy_path}" if policy_path else f"ref:{cfg.model.name}"
    records = sample_records(lm, tok, queries, cfg.task, k=cfg.sample.k, batch_size=cfg.sample.batch_size, seed=cfg.seed, policy_id=policy_id)
    write_jsonl(out, records)
    return records


def step_label(samples: Path, out: Path, *, labeler: str, temperature: float, seed: int) -> list[dict]:
    from lmpref.labelers import label_records, make_labeler

    records = [r for _, r in read_jsonl(samples)]
    labels = label_records(records, make_labeler(labeler), temperature=temperature, seed=seed)
    write_jsonl(out, labels)
    return labels


def step_train_reward(cfg: RunConfig, labels_path: Path, samples_path: Path, out: Path, log_path: Path | None = None) -> dict:
    from lmpref.reward import norm_pairs_from_records, read_labels, train_reward

    device = setup(cfg)
    trunk = cfg.model.reward_model or cfg.model.name
    tok = load_tokenizer(trunk, cfg.model.cache_dir)
    labels = read_labels(labels_path, tok)
    norm_pairs = norm_pairs_from_records([r for _, r in read_jsonl(samples_path)], cfg.reward.norm_samples, cfg.seed)
    rm = RewardModel.from_lm(trunk, cfg.model.cache_dir, cfg.model.dtype).to(device)
    layers = cfg.reward.trainable_layers if cfg.reward.trainable_layers >= 0 else cfg.model.trainable_layers
    freeze_lower_layers(rm.clf, layers)
    rm.clf.score.requires_grad_(True)
    log = MetricsLog(log_path) if log_path else None
    metrics = train_reward(rm, labels, norm_pairs, cfg.reward, pad_id=tok.pad_token_id, seed=cfg.seed, log=log)
    metrics.update({"labels": str(labels_path), "trunk": trunk})
    rm.save(out, extra=metrics)
    tok.save_pretrained(out)
    return metrics


def step_sft(cfg: RunConfig, out: Path, log_path: Path | None = None) -> dict:
    """Supervised baseline: fine-tune `model.name` on the task's (query, reference) pairs of the
    train split; held-out loss on the eval split's pairs. `out` is a policy directory that can be
    the starting policy and reference model of PPO (`--set model.name=<out>`)."""
    from lmpref.sft import target_ids, train_sft
    from lmpref.summarization import SummarizationSource

    device = setup(cfg)
    tok = load_tokenizer(cfg.model.name, cfg.model.cache_dir)
    pairs = {}
    for split in ("train", "eval"):
        queries = SummarizationSource(tok, cfg.task, split).queries(with_reference=True)
        pairs[split] = [(q.ids, target_ids(tok, q.extra["reference"], cfg.task.response_length)) for q in queries]
    heldout = pairs["eval"][: cfg.sft.eval_pairs]
    policy = PolicyWithValue(load_causal_lm(cfg.model.name, cfg.model.cache_dir, cfg.model.dtype)).to(device)
    freeze_lower_layers(policy.lm, cfg.model.trainable_layers)
    log = MetricsLog(log_path) if log_path else None
    metrics = train_sft(policy, pairs["train"], heldout, cfg.sft, pad_id=tok.pad_token_id, query_length=cfg.task.query_length, seed=cfg.seed, log=log)
    metrics["start"] = cfg.model.name
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save(tmp)
    tok.save_pretrained(tmp)
    atomic_write_text(tmp / "sft_metrics.json", json.dumps(metrics, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return metrics


def step_train_reward_human(cfg: RunConfig, out: Path, comparisons: Path | None = None, log_path: Path | None = None) -> dict:
    """A reward model on people's TL;DR comparisons (OpenAI's summarize-from-feedback pairs;
    default: the 929 shipped ones), with held-out accuracy and its 95% Wilson interval.

    The posts are cut to `task.query_length` like the task's queries. The gain and bias are set on
    the compared summaries themselves: there are no samples of our own reference model here."""
    from lmpref.evaluate import wilson_interval
    from lmpref.reward import read_labels, train_reward
    from lmpref.summarization import TLDR_SUFFIX, read_tldr_comparisons

    device = setup(cfg)
    trunk = cfg.model.reward_model or cfg.model.name
    tok = load_tokenizer(trunk, cfg.model.cache_dir)
    budget = cfg.task.query_length - len(tok.encode(TLDR_SUFFIX, add_special_tokens=False))
    records = read_tldr_comparisons(comparisons, tokenizer=tok, max_tokens=budget)
    labels_path = out.with_name(out.name + "_labels.jsonl")
    write_jsonl(labels_path, records)  # the exact labels trained on, in our best-of-K schema
    labels = read_labels(labels_path, tok)
    norm_pairs = [(label.query_ids, r) for label in labels for r in label.response_ids]
    random.Random(f"norm-{cfg.seed}").shuffle(norm_pairs)
    rm = RewardModel.from_lm(trunk, cfg.model.cache_dir, cfg.model.dtype).to(device)
    layers = cfg.reward.trainable_layers if cfg.reward.trainable_layers >= 0 else cfg.model.trainable_layers
    freeze_lower_layers(rm.clf, layers)
    rm.clf.score.requires_grad_(True)
    log = MetricsLog(log_path) if log_path else None
    metrics = train_reward(rm, labels, norm_pairs[: cfg.reward.norm_samples], cfg.reward, pad_id=tok.pad_token_id, seed=cfg.seed, log=log)
    hits = round(metrics["accuracy_after"] * metrics["n_heldout"])
    metrics.update({"accuracy_after_ci": list(wilson_interval(hits, metrics["n_heldout"])), "n_labels": len(records),
                    "labels": str(labels_path), "trunk": trunk, "query_length": cfg.task.query_length})
    rm.save(out, extra=metrics)
    tok.save_pretrained(out)
    return metrics


def _checkpoint_fn(run_dir: Path, policy: PolicyWithValue, tok):
    ckpts = run_dir / "checkpoints"

    def save(update: int, state: dict, optimizer) -> None:
        final = ckpts / f"update-{update:06d}"
        tmp = ckpts / f".update-{update:06d}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        policy.save(tmp)
        tok.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        atomic_write_text(tmp / "state.json", json.dumps(state))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        atomic_write_text(ckpts / "latest", final.name)  # the pointer moves only once the checkpoint is whole
        for old in sorted(ckpts.glob("update-*"))[:-2]:  # keep the last two
            shutil.rmtree(old, ignore_errors=True)

    return save


def _then(log, after):
    """`log`, then `after` with the same row (when given)."""
    if after is None:
        return log

    def both(row: dict) -> None:
        log(row)
        after(row)

    return both


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = run_dir / "checkpoints" / "latest"
    if pointer.exists():
        path = run_dir / "checkpoints" / pointer.read_text().strip()
        if (path / "state.json").exists():
            return path
    return None


def step_train_policy(cfg: RunConfig, reward_path: Path, run_dir: Path, *, resume: bool = False, should_stop=None, after_log=None) -> dict:
    """PPO into run_dir (checkpoints/, metrics.jsonl, policy/). `should_stop()` is read between
    updates; `after_log(row)` is called with each update's metrics row once it is logged and before
    that update's checkpoint is written (the experiment loop's test-only kill point lives there)."""
    from accelerate import Accelerator

    from lmpref.ppo import make_optimizer, train_policy
    from lmpref.tasks import make_query_source

    setup(cfg)
    # One process: a no-op wrapper. Under `accelerate launch`: DDP (or DeepSpeed / FSDP) from its config.
    accelerator = Accelerator()
    device = accelerator.device
    tok = load_tokenizer(cfg.model.name, cfg.model.cache_dir)
    ckpt = latest_checkpoint(run_dir) if resume else None
    if ckpt is None and resume:
        print(f"[lmpref] no checkpoint in {run_dir}/checkpoints: starting PPO from the beginning")
    if ckpt is None:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    policy = (PolicyWithValue.load(ckpt, dtype=cfg.model.dtype) if ckpt else PolicyWithValue(load_causal_lm(cfg.model.name, cfg.model.cache_dir, cfg.model.dtype, cfg.model.attn_implementation))).to(device)
    freeze_lower_layers(policy.lm, cfg.model.trainable_layers)
    ref = _ref_model(cfg, device)
    rm = RewardModel.load(reward_path, cfg.model.dtype).to(device).eval()
    rm.requires_grad_(False)
    optimizer = make_optimizer([p for p in policy.parameters() if p.requires_grad], cfg.ppo)
    state = None
    if ckpt:
        optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location=device))
        state = json.loads((ckpt / "state.json").read_text())
        print(f"[lmpref] resuming PPO from {ckpt} (update {state['update']})")
    plain_policy = policy
    policy, optimizer = accelerator.prepare(policy, optimizer)
    source = make_query_source(tok, cfg.task, "train")
    state = train_policy(
        policy, ref, rm, tok, lambda update, n: source.sample(n, f"ppo-{cfg.seed}-{update}"), cfg.ppo, cfg.task,
        seed=cfg.seed, device=device, state=state, optimizer=optimizer,
        log=_then(MetricsLog(run_dir / "metrics.jsonl", run_dir / "tb"), after_log) if accelerator.is_main_process else None,
        checkpoint=_checkpoint_fn(run_dir, plain_policy, tok),
        should_stop=should_stop, forward_batch=cfg.sample.batch_size, accelerator=accelerator,
    )
    policy = plain_policy
    if not state.get("stopped") and accelerator.is_main_process:
        tmp = run_dir / ".policy.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        policy.save(tmp)
        tok.save_pretrained(tmp)
        shutil.rmtree(run_dir / "policy", ignore_errors=True)
        tmp.rename(run_dir / "policy")
    return state


def pairwise_win_rates(labeler, queries: list[str], responses: dict[str, list[tuple[str, bool]]], references: list[str | None]) -> list[dict]:
    """Win rate of every policy over every later one on the same queries, judged by the labeler's
    noise-free scores (`evaluate.judge`: an invalid response loses to a valid one).
    responses: {name: [(text, valid)] per query}. One row per unordered pair {a, b, win_rate (of a), ...}."""
    from lmpref.evaluate import judge, wilson_interval

    names, rows = list(responses), []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            outcomes = [judge(labeler, q, *responses[a][k], *responses[b][k], reference=references[k]) for k, q in enumerate(queries)]
            wins = sum(outcomes)
            rows.append({"a": a, "b": b, "win_rate": wins / len(outcomes) if outcomes else float("nan"),
                         "win_rate_ci": list(wilson_interval(wins, len(outcomes))), "n": len(outcomes)})
    return rows


def step_evaluate(cfg: RunConfig, policy_path: Path, reward_path: Path | None, out: Path, *, compare: dict[str, Path] | None = None) -> dict:
    """Every policy answers the same held-out queries with the same sampling noise: the trained
    `policy`, the reference model `ref`, and any in `compare` (an SFT model, checkpoints, other
    runs). Writes next to `out`:
      eval.json           policy vs ref win rate judged by the labeler (noise-free: its scores),
                          mean reward, KL, samples; `pairwise`: win rates between every two
                          policies (and lead-3 and the references on summarization tasks)
      eval_samples.jsonl  every query with each policy's `<name>_response` and `<name>_valid`
      summary_eval.json   summarization tasks: ROUGE, novelty, copying per policy (metrics.summary_eval)
    """
    from tqdm.auto import tqdm

    from lmpref.evaluate import format_table, sequence_kl, win_rate
    from lmpref.labelers import make_labeler
    from lmpref.metrics import lead3_summaries, summary_eval
    from lmpref.ppo import apply_penalty
    from lmpref.sampling import cat_query_response, generate, pad_left, postprocess
    from lmpref.summarization import SummarizationSource, document_of_query
    from lmpref.tasks import make_query_source

    device = setup(cfg)
    tok = load_tokenizer(cfg.model.name, cfg.model.cache_dir)
    ref = _ref_model(cfg, device)
    models = {"policy": PolicyWithValue.load(policy_path, dtype=cfg.model.dtype).to(device).eval(), "ref": ref}
    for name, path in (compare or {}).items():
        if name in models:
            raise ValueError(f"policy name {name!r} is taken; 'policy' and 'ref' are the trained policy and the reference model")
        models[name] = PolicyWithValue.load(path, dtype=cfg.model.dtype).to(device).eval()
    rm = RewardModel.load(reward_path, cfg.model.dtype).to(device).eval() if reward_path else None
    source = make_query_source(tok, cfg.task, "eval")
    queries = source.sample(cfg.eval.num_queries, f"eval-{cfg.seed}")
    labeler = make_labeler(cfg.labeler.name)
    R, T, bs = cfg.task.response_length, cfg.task.temperature, cfg.sample.batch_size
    responses = {name: [] for name in models}  # name -> [(text, valid)] per query
    rewards = {name: [] for name in models}
    kls = {name: [] for name in models if name != "ref"}
    with torch.no_grad():
        for s in tqdm(range(0, len(queries), bs), desc="evaluating", unit="batch"):
            chunk = queries[s : s + bs]
            qids, qmask = pad_left([q.ids for q in chunk], tok.pad_token_id, cfg.task.query_length)
            qids, qmask = qids.to(device), qmask.to(device)
            for name, model in models.items():
                torch.manual_seed(cfg.seed * 31 + s)  # the same noise for every policy: paired comparisons
                resp = generate(model.lm, qids, qmask, response_length=R, temperature=T, pad_id=tok.pad_token_id)
                lengths, valid = postprocess(resp.cpu(), cfg.task, tok)
                ids, mask = cat_query_response(qids, qmask, resp)
                if rm is not None:
                    r = rm(ids, mask, qids.shape[1] + lengths.to(device) - 1)
                    rewards[name] += apply_penalty(r, valid, cfg.task.penalty_reward).tolist()
                if name in kls:
                    kls[name] += sequence_kl(model, ref, ids, mask, resp, T).tolist()
                responses[name] += [(tok.decode(x[:n]), bool(v)) for x, n, v in zip(resp.tolist(), lengths.tolist(), valid.tolist())]
    references = [(q.extra or {}).get("reference") for q in queries]
    summarizing = isinstance(source, SummarizationSource)
    if summarizing:  # the paper's baselines, judged like any policy (§4.2)
        documents = [document_of_query(q.text) for q in queries]
        responses["lead-3"] = [(" " + x, True) for x in lead3_summaries(documents)]
        if all(r is not None for r in references):
            responses["reference"] = [(" " + r, True) for r in references]
    pairs = []
    for k, q in enumerate(queries):
        pair = {"id": q.id, "query": q.text, "reference": references[k]}
        for name, rs in responses.items():
            pair[f"{name}_response"], pair[f"{name}_valid"] = rs[k]
        pairs.append(pair)
    result = win_rate(labeler, pairs)
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    score = {k: mean([labeler.score(p["query"], p[f"{k}_response"], reference=p["reference"]) for p in pairs if p[f"{k}_valid"]]) for k in ("policy", "ref")}
    result.update({
        "judge": f"{labeler.name} (noise-free)",
        "mean_reward": {k: mean(rewards[k]) for k in ("policy", "ref")},
        "labeler_score": score,
        "valid_fraction": {k: mean([p[f"{k}_valid"] for p in pairs]) for k in ("policy", "ref")},
        "kl": mean(kls["policy"]),
        "policy": str(policy_path),
        "samples": pairs[: cfg.eval.num_samples_shown],
        "policies": {"policy": str(policy_path), "ref": cfg.model.name, **{k: str(v) for k, v in (compare or {}).items()}},
        "pairwise": pairwise_win_rates(labeler, [q.text for q in queries], responses, references),
        "mean_reward_by_policy": {k: mean(v) for k, v in rewards.items()},
        "kl_by_policy": {k: mean(v) for k, v in kls.items()},
    })
    if summarizing:
        texts = {name: [t for t, _ in rs] for name, rs in responses.items() if name != "lead-3"}
        se = summary_eval(texts, documents, references, task=source.kind)
        atomic_write_text(out.with_name("summary_eval.json"), json.dumps(se, indent=2))
        result["summary_eval"] = "summary_eval.json"
    atomic_write_text(out, json.dumps(result, indent=2, ensure_ascii=False))
    write_jsonl(out.with_name("eval_samples.jsonl"), pairs)
    print(format_table(result))
    for row in result["pairwise"]:
        lo, hi = row["win_rate_ci"]
        print(f"  {row['a']} over {row['b']}: {row['win_rate']:.1%} (95% CI {lo:.1%}-{hi:.1%}, n={row['n']})")
    return result


def comparison_records(samples: list[dict], pairs: list[tuple[str, str]], seed: int) -> list[dict]:
    """Sampling-JSONL records for people from `eval_samples.jsonl` rows: one per (query, pair of
    policies) where both responses are valid (an invalid one is never shown), the two in a seeded
    random order so position cannot favour a policy; `policies` names who wrote which."""
    rng = random.Random(f"compare-{seed}")
    records = []
    for row in samples:
        for a, b in pairs:
            if not (row.get(f"{a}_valid") and row.get(f"{b}_valid")):
                continue
            order = [a, b] if rng.random() < 0.5 else [b, a]
            rec = {"id": f"{row['id']}:{a}|{b}", "query": row["query"], "responses": [row[f"{n}_response"] for n in order],
                   "valid": [True, True], "policies": order, "kind": "comparison"}
            if row.get("reference") is not None:
                rec["reference"] = row["reference"]
            records.append(rec)
    return records


def human_win_rates(labels: list[dict]) -> list[dict]:
    """Win rates per pair of policies from people's labels (the store's best-of-K export rows with
    `policies`, `best` and `tie`; a tie counts half). One row per unordered pair, as `pairwise_win_rates`."""
    from lmpref.evaluate import wilson_interval

    tally: dict[tuple[str, str], list[float]] = {}
    for rec in labels:
        names = rec.get("policies") or []
        if len(names) != 2 or names[0] == names[1]:
            continue
        a, b = sorted(names)
        outcome = 0.5 if rec.get("tie") else float(names[rec["best"]] == a)
        tally.setdefault((a, b), []).append(outcome)
    return [{"a": a, "b": b, "win_rate": sum(o) / len(o), "win_rate_ci": list(wilson_interval(sum(o), len(o))), "n": len(o)}
            for (a, b), o in sorted(tally.items())]


def accuracy_records(samples: list[dict], names: list[str], n_queries: int, seed: int) -> list[dict]:
    """Accuracy-rating records for people from the first `n_queries` rows of `eval_samples.jsonl`:
    one per valid response of each policy in `names` (`"kind": "accuracy"`, one response, the row's
    id as `doc_id`). The paper's authors rated 30 articles per dataset this way (Ziegler et al.
    2019, section 4.2). Policies come in a seeded random order per document, so a labeler rating
    a document's summaries in turn cannot learn which policy comes first."""
    rng = random.Random(f"accuracy-{seed}")
    records = []
    for row in samples[:n_queries]:
        for name in rng.sample(names, len(names)):
            if not row.get(f"{name}_valid"):
                continue  # an invalid response is never shown
            rec = {"id": f"{row['id']}:{name}", "query": row["query"], "responses": [row[f"{name}_response"]],
                   "policy": name, "kind": "accuracy", "doc_id": row["id"]}
            if row.get("reference") is not None:
                rec["reference"] = row["reference"]
            records.append(rec)
    return records


def human_accuracy(ratings: list[dict]) -> dict[str, dict]:
    """Per policy, people's ratings (the store's `ratings` export rows): counts, the accurate share
    of all ratings (unsure counts as not accurate) and its 95% Wilson interval."""
    from lmpref.evaluate import wilson_interval

    out: dict[str, dict] = {}
    for rec in ratings:
        row = out.setdefault(rec["policy"], {"accurate": 0, "inaccurate": 0, "unsure": 0})
        row[rec["rating"]] += 1
    for row in out.values():
        row["n"] = n = row["accurate"] + row["inaccurate"] + row["unsure"]
        row["accurate_share"] = row["accurate"] / n
        row["ci"] = list(wilson_interval(row["accurate"], n))
    return dict(sorted(out.items()))


def _eval_samples(samples_path: Path) -> tuple[list[dict], list[str]]:
    """The rows of `eval_samples.jsonl` and the policies that wrote responses in them."""
    samples = [r for _, r in read_jsonl(samples_path)]
    if not samples:
        raise DataError(f"{samples_path} holds no evaluation samples")
    return samples, [k[: -len("_response")] for k in samples[0] if k.endswith("_response")]


def step_enqueue_comparisons(samples_path: Path, *, db: str | None, run: str, batch: str, pairs: list[tuple[str, str]] | None, seed: int):
    """Put the evaluation's pairs of responses in the label store for people to judge."""
    from lmpref import store

    samples, names = _eval_samples(samples_path)
    pairs = pairs or [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    unknown = {n for pair in pairs for n in pair} - set(names)
    if unknown:
        raise DataError(f"{samples_path} has no responses of {', '.join(sorted(unknown))}; it has {', '.join(names)}")
    with store.transaction(store.open_store(db)) as session:
        return store.enqueue(session, run=run, records=comparison_records(samples, pairs, seed), batch=batch)


def step_enqueue_accuracy(samples_path: Path, *, db: str | None, run: str, batch: str, n_queries: int, seed: int):
    """Put every policy's responses to the first `n_queries` evaluation queries in the label
    store as accuracy-rating tasks."""
    from lmpref import store

    if n_queries < 1:
        raise DataError(f"--enqueue-accuracy needs a positive number of queries, not {n_queries}")
    samples, names = _eval_samples(samples_path)
    with store.transaction(store.open_store(db)) as session:
        return store.enqueue(session, run=run, records=accuracy_records(samples, names, n_queries, seed), batch=batch)


def step_read_human(*, db: str | None, run: str, eval_path: Path) -> list[dict]:
    """People's win rates, read back from the label store into eval.json's `human_pairwise`."""
    from lmpref import store

    with store.transaction(store.open_store(db)) as session:
        rows = human_win_rates(list(store.export_records(session, run=run, fmt="bestofk")))
    result = json.loads(eval_path.read_text()) if eval_path.exists() else {}
    result["human_pairwise"] = rows
    result["human_run"] = run
    atomic_write_text(eval_path, json.dumps(result, indent=2, ensure_ascii=False))
    return rows


def step_read_accuracy(*, db: str | None, run: str, eval_path: Path) -> dict[str, dict]:
    """People's accuracy ratings, read back from the label store into eval.json's `human_accuracy`."""
    from lmpref import store

    with store.transaction(store.open_store(db)) as session:
        accuracy = human_accuracy(list(store.export_records(session, run=run, fmt="ratings")))
    result = json.loads(eval_path.read_text()) if eval_path.exists() else {}
    result["human_accuracy"] = accuracy
    atomic_write_text(eval_path, json.dumps(result, indent=2, ensure_ascii=False))
    return accuracy


def run_offline(cfg: RunConfig, *, resume: bool = False) -> dict:
    """The main job: sample from ρ, label, train the reward model, PPO, evaluate."""
    run_dir = cfg.resolved_run_dir()
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
        n = len(step_label(samples, labels, labeler=cfg.labeler.name, temperature=cfg.labeler.temperature, seed=cfg.seed))
        print(f"      {n} labels")
    if not (rm_dir / "config.json").exists():
        print("[3/5] training the reward model")
        m = step_train_reward(cfg, labels, samples, rm_dir, run_dir / "reward_metrics.jsonl")
        print(f"      held-out accuracy {m['accuracy_before']:.1%} -> {m['accuracy_after']:.1%} (chance {m['chance']:.1%}, n={m['n_heldout']})")
    if not (run_dir / "policy" / "config.json").exists():
        print("[4/5] PPO")
        state = step_train_policy(cfg, rm_dir, run_dir, resume=True)
        if state.get("stopped"):
            return {"stopped": state["stopped"]}
    print("[5/5] evaluating on held-out queries")
    return step_evaluate(cfg, run_dir / "policy", rm_dir, run_dir / "eval.json")
