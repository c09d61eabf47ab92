"""The evaluation steps on files: every policy answers the same held-out queries (`step_evaluate`),
and people's judgements go out to the label store and come back into `eval.json`.

run_dir/
  eval.json             win rates (labeler; `human_pairwise`, `human_accuracy` once people have judged),
                        mean reward, KL, samples side by side; `by_policy`: every policy against ρ with
                        what its training cost (labels, episodes, minutes: `read_policy_meta`)
  eval_samples.jsonl    every query with each policy's `<name>_response` and `<name>_valid`
  summary_eval.json     summarization tasks: ROUGE, novelty, copying per policy

The math (win rates, intervals, tallies of people's labels) is `lmpref.eval.winrate`'s; this module
only samples, reads and writes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import numpy as np
import torch

from lmpref.config import ConfigError, RunConfig
from lmpref.core.loading import load_tokenizer
from lmpref.core.models import PolicyWithValue
from lmpref.core.reward import RewardModel
from lmpref.core.runtime import load_reference, setup
from lmpref.eval.winrate import (
    format_policies,
    format_table,
    human_accuracy,
    human_win_rates,
    pairwise_win_rates,
    win_rate,
    win_rate_over,
)
from lmpref.io import DataError, atomic_write_text, read_jsonl, write_jsonl
from lmpref.steps.checkpoint import read_policy_meta

NO_TRAINING = {"labels": None, "episodes": None, "minutes": None}  # ρ: not a trained policy
UNTRAINED = {"labels": 0, "episodes": 0, "minutes": None}  # best-of-N: trained on nothing (its reward model was)


def step_evaluate(
    cfg: RunConfig,
    policy_path: Path,
    reward_path: Path | None,
    out: Path,
    *,
    compare: dict[str, Path] | None = None,
    best_of: dict[str, tuple[int, str]] | None = None,
) -> dict:
    """Every policy answers the same held-out queries with the same sampling noise: the trained
    `policy`, the reference model `ref`, and any in `compare` (an SFT model, checkpoints, other
    runs). Writes next to `out`:
      eval.json           policy vs ref win rate judged by the labeler (noise-free: its scores),
                          mean reward, KL, samples; `pairwise`: win rates between every two
                          policies (and lead-3 and the references on summarization tasks)
      eval_samples.jsonl  every query with each policy's `<name>_response` and `<name>_valid`
      summary_eval.json   summarization tasks: ROUGE, novelty, copying per policy (metrics.summary_eval)

    `best_of` {name: (N, base)} adds best-of-N policies, trained on nothing: N samples of `base`
    ('ref', 'policy', a `compare` name or a policy directory) per query, the one the reward model
    scores highest kept (an invalid response scores the task's penalty). Their KL is the analytic
    log N − (N − 1)/N of best-of-N against its base (Stiennon et al. 2020, appendix G.3; exact
    for continuous rewards without ties), recorded in `kl_by_policy`.

    `by_policy` {name: row} puts every policy against ρ in one table (`policy_rows`): win rate, where
    both are valid, labeler score, KL, and labels, episodes and minutes of training as its folder
    recorded them (`lmpref_policy.json`; None for ρ and for a folder without the record; best-of-N:
    0 labels, 0 episodes and no minutes).
    """
    from tqdm.auto import tqdm

    from lmpref.core.batching import pad_left
    from lmpref.core.responses import apply_penalty, postprocess
    from lmpref.core.sampling import cat_query_response, logprobs_of
    from lmpref.core.trunk import plan as trunk_plan
    from lmpref.core.trunk import reward_scores, sample
    from lmpref.eval.labelers import make_labeler
    from lmpref.eval.metrics import lead3_summaries, summary_eval
    from lmpref.tasks import make_query_source
    from lmpref.tasks.summarization import SummarizationSource, document_of_query

    device = setup(cfg)
    tok = load_tokenizer(cfg.model.name, cfg.model.cache_dir)
    ref = load_reference(cfg, device)
    models = {"policy": PolicyWithValue.load(policy_path, dtype=cfg.model.dtype).to(device).eval(), "ref": ref}
    for name, path in (compare or {}).items():
        if name in models:
            raise ValueError(
                f"policy name {name!r} is taken; 'policy' and 'ref' are the trained policy and the reference model"
            )
        models[name] = PolicyWithValue.load(path, dtype=cfg.model.dtype).to(device).eval()
    rm = RewardModel.load(reward_path, cfg.model.dtype).to(device).eval() if reward_path else None
    bases = {}
    for name, (n, base) in (best_of or {}).items():
        if rm is None:
            raise ConfigError(
                f"best-of-N policy {name!r} keeps the sample the reward model prefers: give --reward-model"
            )
        if name in models or n < 1:
            raise ConfigError(f"best-of-N policy {name!r}: choose a name not taken and N >= 1 (got {n})")
        bases[name] = (
            models[base] if base in models else PolicyWithValue.load(base, dtype=cfg.model.dtype).to(device).eval()
        )
    source = make_query_source(tok, cfg.task, "eval", cfg.model.name)
    queries = source.sample(cfg.eval.num_queries, f"eval-{cfg.seed}")
    labeler = make_labeler(cfg.labeler.name)
    R, T, bs = cfg.task.response_length, cfg.task.temperature, cfg.sample.batch_size
    responses = {name: [] for name in [*models, *bases]}  # name -> [(text, valid)] per query
    rewards = {name: [] for name in [*models, *bases]}
    kls = {name: [] for name in [*models, *bases] if name != "ref"}
    plans = {name: trunk_plan(model.lm, ref.lm, rm) for name, model in models.items()}
    plans["ref"] = dataclasses.replace(plans["ref"], depth=0)  # ρ against itself: no KL to compute
    with torch.no_grad():
        for s in tqdm(range(0, len(queries), bs), desc="evaluating", unit="batch"):
            chunk = queries[s : s + bs]
            qids, qmask = pad_left([q.ids for q in chunk], tok.pad_token_id, cfg.task.query_length)
            qids, qmask = qids.to(device), qmask.to(device)
            for name, model in models.items():
                torch.manual_seed(cfg.seed * 31 + s)  # the same noise for every policy: paired comparisons
                p = plans[name]  # the sampling pass keeps what ρ and the reward model start from (lmpref.core.trunk)
                s_ = sample(model.lm, qids, qmask, response_length=R, temperature=T, depths=p.depths)
                resp = s_.responses
                lengths, valid = postprocess(resp.cpu(), cfg.task, tok)
                ids, mask = cat_query_response(qids, qmask, resp)
                if rm is not None:
                    r = reward_scores(
                        rm, ids, mask, qids.shape[1] + lengths.to(device) - 1, qids.shape[1], s_.hidden, p.reward_depth
                    )
                    rewards[name] += apply_penalty(r, valid, cfg.task.penalty_reward).tolist()
                if name in kls:
                    ref_logits, _ = ref(
                        ids, mask, R, T, with_values=False, hidden=s_.hidden.get(p.depth), depth=p.depth
                    )
                    kls[name] += (
                        (s_.logprobs - logprobs_of(ref_logits, resp)).sum(1).tolist()
                    )  # Σ_t log π − log ρ on π's samples
                responses[name] += [
                    (tok.decode(x[:n]), bool(v)) for x, n, v in zip(resp.tolist(), lengths.tolist(), valid.tolist())
                ]
            for name, base_model in bases.items():
                n = best_of[name][0]
                torch.manual_seed(cfg.seed * 31 + s + 7_919 * n)
                per = max(1, bs // n)  # queries per pass: each sampled n times
                for q0 in range(0, len(chunk), per):
                    s_ = sample(
                        base_model.lm, qids[q0 : q0 + per], qmask[q0 : q0 + per], k=n, response_length=R, temperature=T
                    )
                    resp, Q = s_.responses, s_.query_ids.shape[1]  # (b·n, R)
                    lengths, valid = postprocess(resp.cpu(), cfg.task, tok)
                    ids, mask = cat_query_response(s_.query_ids, s_.query_mask, resp)
                    r = reward_scores(rm, ids, mask, Q + lengths.to(device) - 1, Q)
                    r = apply_penalty(r, valid, cfg.task.penalty_reward).view(-1, n)  # (b, n)
                    for i, j in enumerate(r.argmax(1).tolist()):
                        k = i * n + j
                        rewards[name].append(r[i, j].item())
                        responses[name].append((tok.decode(resp[k, : lengths[k]].tolist()), bool(valid[k])))
                        kls[name].append(math.log(n) - (n - 1) / n)
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
    score = {
        k: mean(
            [labeler.score(p["query"], p[f"{k}_response"], reference=p["reference"]) for p in pairs if p[f"{k}_valid"]]
        )
        for k in ("policy", "ref")
    }
    result.update(
        {
            "judge": f"{labeler.name} (noise-free)",
            "mean_reward": {k: mean(rewards[k]) for k in ("policy", "ref")},
            "labeler_score": score,
            "valid_fraction": {k: mean([p[f"{k}_valid"] for p in pairs]) for k in ("policy", "ref")},
            "kl": mean(kls["policy"]),
            "policy": str(policy_path),
            "samples": pairs[: cfg.eval.num_samples_shown],
            "policies": {
                "policy": str(policy_path),
                "ref": cfg.model.name,
                **{k: str(v) for k, v in (compare or {}).items()},
                **{k: f"best-of-{n} of {base}" for k, (n, base) in (best_of or {}).items()},
            },
            "pairwise": pairwise_win_rates(labeler, [q.text for q in queries], responses, references),
            "mean_reward_by_policy": {k: mean(v) for k, v in rewards.items()},
            "kl_by_policy": {k: mean(v) for k, v in kls.items()},
        }
    )
    training = {
        "policy": _training(policy_path),
        "ref": NO_TRAINING,
        **{k: _training(v) for k, v in (compare or {}).items()},
        **{k: UNTRAINED for k in bases},
    }
    result["by_policy"] = policy_rows(labeler, pairs, result["kl_by_policy"], training)
    if summarizing:
        texts = {name: [t for t, _ in rs] for name, rs in responses.items() if name != "lead-3"}
        se = summary_eval(texts, documents, references, task=source.kind)
        atomic_write_text(out.with_name("summary_eval.json"), json.dumps(se, indent=2))
        result["summary_eval"] = "summary_eval.json"
    atomic_write_text(out, json.dumps(result, indent=2, ensure_ascii=False))
    write_jsonl(out.with_name("eval_samples.jsonl"), pairs)
    print(format_table(result))
    print(format_policies(result["by_policy"]))
    for row in result["pairwise"]:
        lo, hi = row["win_rate_ci"]
        print(f"  {row['a']} over {row['b']}: {row['win_rate']:.1%} (95% CI {lo:.1%}-{hi:.1%}, n={row['n']})")
    return result


def _training(policy_path: Path) -> dict:
    """Labels, episodes and minutes of training that a policy folder recorded; None where it did not."""
    meta = read_policy_meta(policy_path)
    return {"labels": meta.get("labels"), "episodes": meta.get("episodes"), "minutes": meta.get("train_minutes")}


def policy_rows(labeler, pairs: list[dict], kl: dict[str, float], training: dict[str, dict]) -> dict[str, dict]:
    """Per policy of `training` ({name: labels, episodes, minutes}), against ρ on the evaluation rows:
    its win rate over ρ (with CI) and where both responses are valid, the labeler's mean score of its
    valid responses, its valid share and KL (ρ: 0)."""
    rows = {}
    for name, cost in training.items():
        wr = win_rate_over(labeler, pairs, name) if name != "ref" else {}
        valid = [p for p in pairs if p[f"{name}_valid"]]
        scores = [labeler.score(p["query"], p[f"{name}_response"], reference=p["reference"]) for p in valid]
        rows[name] = {
            **{k: wr.get(k) for k in ("win_rate", "win_rate_ci", "win_rate_both_valid", "n_both_valid")},
            "labeler_score": float(np.mean(scores)) if scores else float("nan"),
            "valid_fraction": len(valid) / len(pairs) if pairs else float("nan"),
            "kl": 0.0 if name == "ref" else kl.get(name),
            **cost,
        }
    return rows


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
            rec = {
                "id": f"{row['id']}:{a}|{b}",
                "query": row["query"],
                "responses": [row[f"{n}_response"] for n in order],
                "valid": [True, True],
                "policies": order,
                "kind": "comparison",
            }
            if row.get("reference") is not None:
                rec["reference"] = row["reference"]
            records.append(rec)
    return records


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
            rec = {
                "id": f"{row['id']}:{name}",
                "query": row["query"],
                "responses": [row[f"{name}_response"]],
                "policy": name,
                "kind": "accuracy",
                "doc_id": row["id"],
            }
            if row.get("reference") is not None:
                rec["reference"] = row["reference"]
            records.append(rec)
    return records


def _eval_samples(samples_path: Path) -> tuple[list[dict], list[str]]:
    """The rows of `eval_samples.jsonl` and the policies that wrote responses in them."""
    samples = [r for _, r in read_jsonl(samples_path)]
    if not samples:
        raise DataError(f"{samples_path} holds no evaluation samples")
    return samples, [k[: -len("_response")] for k in samples[0] if k.endswith("_response")]


def step_enqueue_comparisons(
    samples_path: Path, *, db: str | None, run: str, batch: str, pairs: list[tuple[str, str]] | None, seed: int
):
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
