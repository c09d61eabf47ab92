"""The reward model, in one place: the model (`RewardModel`: a scalar head on a causal LM's trunk,
optionally prompted with a template and started from a verbalizer prior), its construction from the
config (`new_reward_model`), the best-of-K loss (softmax cross-entropy over the K rewards), the
label files it learns from (`read_labels`: lmpref's, OpenAI's and pairwise schemas), normalisation
to mean 0 / std 1 on the reference model's samples, and the training loop with held-out accuracy.

Shapes: B labels, K responses per label (variable; padded with a mask), N = flattened sequences, T tokens.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lmpref.config import ConfigError, RewardConfig, RunConfig
from lmpref.core import lora
from lmpref.core.batching import pad_left
from lmpref.core.loading import DTYPES, _hub_error, resolve_model
from lmpref.core.models import (
    POOLINGS,
    append_after,
    disable_dropout,
    freeze_lower_layers,
    from_depth,
    pool_response,
    position_ids_from_mask,
)
from lmpref.io import DataError, ModelLoadError, atomic_dir, read_json_or_jsonl


def best_of_k_loss(rewards: torch.Tensor, best: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax cross-entropy of the labeled-best response among the K rewards (paper eq. 1).
    rewards (B, K), best (B,), mask (B, K) True where a response exists (K=2 is the pairwise case)."""
    if mask is not None:
        rewards = rewards.masked_fill(~mask, float("-inf"))
    return F.cross_entropy(rewards, best)


@dataclass
class Choice:
    """One labeled best-of-K choice: a query, its K responses (token ids) and the index of the best."""

    query_ids: list[int]
    response_ids: list[list[int]]
    best: int
    doc_id: str | None = None  # the document the query came from: labels sharing one are split together


def _ids(tokenizer, rec, key_ids, key_text, where):
    if key_ids in rec:
        return rec[key_ids]
    if key_text in rec:
        val = rec[key_text]
        if isinstance(val, list):
            return [tokenizer.encode(v, add_special_tokens=False) for v in val]
        return tokenizer.encode(val, add_special_tokens=False)
    raise DataError(f"{where}: missing {key_text!r} (or {key_ids!r})")


def read_labels(path: str | Path, tokenizer) -> list[Choice]:
    """Best-of-K labels from our JSONL ({query, responses, best} with optional token ids and
    `doc_id`), from OpenAI's released files ({query: ids, sample0..sample3: ids, best}; GPT-2
    token ids) or from pairwise files ({prompt, chosen, rejected}: K = 2, best = 0). Ties are
    skipped: the loss has nothing to learn from "all equally good"."""
    vocab = len(tokenizer)
    labels, rows, ties = [], 0, 0
    for lineno, rec in read_json_or_jsonl(path):
        rows += 1
        where = f"{path}:{lineno}"
        if "sample0" in rec:  # OpenAI's schema
            keys = sorted((k for k in rec if k.startswith("sample") and k[6:].isdigit()), key=lambda k: int(k[6:]))
            query, responses = rec.get("query"), [rec[k] for k in keys]
        elif "chosen" in rec and "rejected" in rec:  # pairwise (TRL / HF preference datasets): K = 2
            query = _ids(tokenizer, rec, "prompt_ids", "prompt", where)
            responses = [_ids(tokenizer, rec, f"{k}_ids", k, where) for k in ("chosen", "rejected")]
            rec = {**rec, "best": 0}
        elif "responses" not in rec and ("rating" in rec or "answer" in rec):
            kind = "an accuracy rating" if "rating" in rec else "a critique"
            raise DataError(
                f"{where}: {kind}, not a comparison; export comparisons with --format bestofk, openai or pairwise"
            )
        else:
            query = _ids(tokenizer, rec, "query_ids", "query", where)
            responses = _ids(tokenizer, rec, "response_ids", "responses", where)
        if rec.get("tie"):
            ties += 1
            continue
        best = rec.get("best")
        if not isinstance(query, list) or not all(isinstance(t, int) for t in query):
            raise DataError(f"{where}: 'query' must be text or a list of token ids")
        if not isinstance(responses, list) or len(responses) < 2:
            raise DataError(f"{where}: needs at least 2 responses to compare")
        if not isinstance(best, int) or isinstance(best, bool) or not 0 <= best < len(responses):
            raise DataError(f"{where}: 'best' must be an integer index in [0, {len(responses)}), got {best!r}")
        for r in [query, *responses]:
            if any((not isinstance(t, int)) or t < 0 or t >= vocab for t in r):
                raise DataError(
                    f"{where}: token ids out of range for this tokenizer (vocab {vocab}); OpenAI's files need a GPT-2 "
                    "tokenizer"
                )
        doc_id = rec.get("doc_id")
        if doc_id is not None and not isinstance(doc_id, (str, int)):
            raise DataError(f"{where}: 'doc_id' must be a string, got {doc_id!r}")
        labels.append(Choice(query, responses, best, None if doc_id is None else str(doc_id)))
    if not labels:
        why = "the file is empty" if not rows else f"all {rows} rows are ties, which the loss skips"
        raise DataError(
            f"{path}: no usable labels: {why}; a label store export also leaves out too-fast labels "
            "(`lmpref serve --min-seconds`) and gold tasks"
        )
    return labels


def batch_sequences(pairs: list[tuple[list[int], list[int]]], pad_id: int):
    """(query ids, response ids) pairs -> left-padded queries + right-padded responses:
    ids (N, T), mask (N, T), index of each sequence's last response token (N,). The responses start
    at the padded query length, `query_length_of(ids, pairs)`."""
    q_ids, q_mask = pad_left([q for q, _ in pairs], pad_id)
    rlen = max(max(len(r) for _, r in pairs), 1)
    r_ids = torch.full((len(pairs), rlen), pad_id, dtype=torch.long)
    r_mask = torch.zeros((len(pairs), rlen), dtype=torch.long)
    for i, (_, r) in enumerate(pairs):
        r_ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        r_mask[i, : len(r)] = 1
    last = torch.tensor([q_ids.shape[1] + max(len(r), 1) - 1 for _, r in pairs])
    return torch.cat([q_ids, r_ids], 1), torch.cat([q_mask, r_mask], 1), last


def _query_length(pairs) -> int:
    return max(len(q) for q, _ in pairs)


def pair_features(rm, pairs, pad_id: int, batch_size: int = 32, desc: str | None = None) -> torch.Tensor:
    """What the reward model's head reads for each (query ids, response ids) pair, without
    gradients: (N, D). Pairs of one query are batched together where they come in order."""
    out = []
    device = next(rm.parameters()).device
    with torch.no_grad():
        for s in tqdm(range(0, len(pairs), batch_size), desc=desc, unit="batch", disable=desc is None):
            chunk = pairs[s : s + batch_size]
            ids, mask, last = batch_sequences(chunk, pad_id)
            out.append(rm.features(ids.to(device), mask.to(device), last.to(device), _query_length(chunk)))
    return torch.cat(out) if out else torch.zeros(0)


def score_pairs(
    rm, pairs, pad_id: int, batch_size: int = 32, raw: bool = False, desc: str | None = None
) -> torch.Tensor:
    """Rewards (N,) of (query ids, response ids) pairs, in batches, without gradients."""
    with torch.no_grad():
        scores = rm.head(pair_features(rm, pairs, pad_id, batch_size, desc))
        return scores if raw else rm.gain * scores + rm.bias


def set_normalization(rm, raw: torch.Tensor) -> dict:
    """Set gain and bias so that the raw scores `raw` (N,) of the reference model's samples get mean 0
    and std 1."""
    mean, std = raw.mean().item(), raw.std().item()
    gain = 1.0 / max(std, 1e-6)
    rm.set_normalization(gain, -mean * gain)
    return {"raw_mean": mean, "raw_std": std, "gain": gain, "bias": -mean * gain}


def normalize(rm, pairs, pad_id: int, batch_size: int = 32) -> dict:
    """Set gain and bias so rewards on the reference model's samples have mean 0 and std 1."""
    return set_normalization(rm, score_pairs(rm, pairs, pad_id, batch_size, raw=True, desc="normalising reward"))


def _label_pairs(labels: list[Choice]):
    pairs, index = [], []
    for b, label in enumerate(labels):
        for k, r in enumerate(label.response_ids):
            pairs.append((label.query_ids, r))
            index.append((b, k))
    return pairs, index


def _scatter(flat: torch.Tensor, index, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat rewards (N,) -> (B, K) rewards and the (B, K) mask of responses that exist."""
    kmax = max(len(c.response_ids) for c in labels)
    device = flat.device
    b_idx = torch.tensor([b for b, _ in index], device=device)
    k_idx = torch.tensor([k for _, k in index], device=device)
    rewards = torch.zeros(len(labels), kmax, device=device).index_put((b_idx, k_idx), flat)
    present = torch.zeros(len(labels), kmax, dtype=torch.bool, device=device)
    present[b_idx, k_idx] = True
    return rewards, present


def label_rewards(rm, labels: list[Choice], pad_id: int):
    """(B, K) rewards with a mask, for a list of labels, with gradients."""
    pairs, index = _label_pairs(labels)
    device = next(rm.parameters()).device
    ids, mask, last = batch_sequences(pairs, pad_id)
    flat = rm(ids.to(device), mask.to(device), last.to(device), _query_length(pairs))  # (N,)
    return _scatter(flat, index, labels)  # (B, K), (B, K)


class FeatureCache:
    """The head's input for every response of a set of labels, computed once: with a frozen trunk
    (`reward.trainable_layers = 0`) training only fits the head, so each epoch costs a matrix product
    instead of a pass through the model."""

    def __init__(self, rm, labels: list[Choice], norm_pairs, pad_id: int, batch_size: int = 32):
        pairs, _ = _label_pairs(labels)
        keys = list(dict.fromkeys((tuple(q), tuple(r)) for q, r in [*pairs, *norm_pairs]))
        self.row = {key: i for i, key in enumerate(keys)}
        self.rm = rm
        self.features = pair_features(
            rm, [(list(q), list(r)) for q, r in keys], pad_id, batch_size, desc="reward-model features"
        )  # (U, D)
        self.norm_rows = torch.tensor([self.row[(tuple(q), tuple(r))] for q, r in norm_pairs])

    def label_rewards(self, labels: list[Choice]):
        pairs, index = _label_pairs(labels)
        rows = torch.tensor([self.row[(tuple(q), tuple(r))] for q, r in pairs])
        flat = self.rm.gain * self.rm.head(self.features[rows]) + self.rm.bias
        return _scatter(flat, index, labels)

    def normalize(self) -> dict:
        with torch.no_grad():
            return set_normalization(self.rm, self.rm.head(self.features[self.norm_rows]))


def accuracy(
    rm,
    labels: list[Choice],
    pad_id: int,
    batch_size: int = 8,
    *,
    cache: FeatureCache | None = None,
    desc: str | None = None,
) -> float:
    """Share of labels where the reward model ranks the labeled-best response first (a progress bar
    named `desc` when given)."""
    if not labels:
        return float("nan")
    hits = 0
    with torch.no_grad():
        for s in tqdm(range(0, len(labels), batch_size), desc=desc, unit="batch", disable=desc is None):
            chunk = labels[s : s + batch_size]
            rewards, present = cache.label_rewards(chunk) if cache else label_rewards(rm, chunk, pad_id)
            pred = rewards.masked_fill(~present, float("-inf")).argmax(-1).cpu()
            hits += sum(int(p == c.best) for p, c in zip(pred.tolist(), chunk))
    return hits / len(labels)


def truncate_labels(labels: list[Choice], query_length: int, response_length: int) -> list[Choice]:
    """Labels cut to the lengths the reward model is trained at: the END of each query (a dialogue's
    last turns, a post's "TL;DR:") and the START of each response. A length of 0 leaves it whole."""
    return [
        Choice(
            c.query_ids[-query_length:] if query_length > 0 else c.query_ids,
            [r[:response_length] if response_length > 0 else r for r in c.response_ids],
            c.best,
            c.doc_id,
        )
        for c in labels
    ]


def split_labels(labels: list[Choice], holdout_fraction: float, seed: int) -> tuple[list[Choice], list[Choice]]:
    """(train, held-out). Labels that share a `doc_id` land on the same side: a document compared
    more than once (55 of the 866 human TL;DR posts, in 118 of the 929 comparisons) must not be
    trained on and then scored as unseen, which would flatter held-out accuracy. A label without a
    `doc_id` is a group of its own (labels read through `lmpref.formats` carry their prompt's).

    Groups are visited in a seeded random order and each goes to held-out when that brings the
    held-out count nearer round(len(labels) * holdout_fraction), so the count misses by at most
    half the largest group. With no shared `doc_id` this is the plain per-label split."""
    groups: dict[tuple, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(("doc", label.doc_id) if label.doc_id is not None else ("label", i), []).append(i)
    order = list(groups.values())
    random.Random(f"rm-split-{seed}").shuffle(order)
    target = int(round(len(labels) * holdout_fraction))
    train: list[int] = []
    heldout: list[int] = []
    for group in order:
        closer = abs(len(heldout) + len(group) - target) < abs(len(heldout) - target)
        (heldout if closer else train).extend(group)
    return [labels[i] for i in train], [labels[i] for i in heldout]


def train_reward(
    rm,
    labels: list[Choice],
    norm_pairs,
    cfg: RewardConfig,
    *,
    pad_id: int,
    seed: int,
    log=None,
) -> dict:
    """Normalise, train on best-of-K choices for `cfg.epochs`, normalise again; returns metrics.
    Held-out accuracy is measured on the share `cfg.holdout_fraction` that `split_labels` keeps aside.

    One visible loop: shuffle, batch, loss, step. The learning rate decays linearly to 0. With a
    frozen trunk only the head trains, on features computed once (`FeatureCache`); `cfg.weight_decay`
    is an L2 penalty on the distance of the trained parameters from their start (L2-SP, Li et al.
    2018): with a verbalizer head it keeps the labels' fit near the zero-shot prior."""
    torch.manual_seed(seed)
    train, heldout = split_labels(labels, cfg.holdout_fraction, seed)
    if not train:
        raise DataError(
            "no labels left for training after the hold-out split; collect more labels or lower reward.holdout_fraction"
        )
    metrics = {"n_train": len(train), "n_heldout": len(heldout), "pooling": rm.pooling}
    head = {id(p) for p in rm.clf.score.parameters()}
    frozen_trunk = not any(p.requires_grad for p in rm.parameters() if id(p) not in head)
    cache = FeatureCache(rm, labels, norm_pairs, pad_id) if frozen_trunk else None
    metrics["norm_before"] = cache.normalize() if cache else normalize(rm, norm_pairs, pad_id)
    metrics["accuracy_before"] = accuracy(rm, heldout, pad_id, cache=cache)
    params = [p for p in rm.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]  # L2-SP: the penalty pulls toward where training started
    opt = torch.optim.Adam(params, lr=cfg.lr)
    steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    rng = random.Random(f"rm-shuffle-{seed}")
    rm.train()
    step = 0
    bar = tqdm(total=steps, desc="training reward model", unit="step")
    for epoch in range(cfg.epochs):
        order = list(range(len(train)))
        rng.shuffle(order)
        for s in range(0, len(order), cfg.batch_size):
            batch = [train[i] for i in order[s : s + cfg.batch_size]]
            rewards, present = cache.label_rewards(batch) if cache else label_rewards(rm, batch, pad_id)  # (B, K)
            best = torch.tensor([c.best for c in batch], device=rewards.device)
            loss = best_of_k_loss(rewards, best, present)
            penalty = (
                cfg.weight_decay * sum(((p - p0) ** 2).sum() for p, p0 in zip(params, start))
                if cfg.weight_decay
                else 0.0
            )
            opt.zero_grad()
            (loss + penalty).backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                acc = (rewards.masked_fill(~present, float("-inf")).argmax(-1) == best).float().mean().item()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if log:
                log(
                    {
                        "step": step,
                        "epoch": epoch,
                        "reward/loss": loss.item(),
                        "reward/train_accuracy": acc,
                        "reward/lr": sched.get_last_lr()[0],
                    }
                )
    bar.close()
    rm.eval()
    metrics["accuracy_after"] = accuracy(rm, heldout, pad_id, cache=cache)
    metrics["norm_after"] = cache.normalize() if cache else normalize(rm, norm_pairs, pad_id)
    metrics["chance"] = (sum(1 / len(c.response_ids) for c in heldout) / len(heldout)) if heldout else float("nan")
    return metrics


def norm_pairs_from_records(records: list[dict], n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """Reference-model samples (query ids, cut response ids) for normalisation, valid or not: the
    reward model sees every sample the policy will make."""
    pairs = [(r["query_ids"], ids) for r in records for ids in r["response_ids"]]
    random.Random(f"norm-{seed}").shuffle(pairs)
    if not pairs:
        raise DataError("no reference samples to normalise the reward model on")
    return pairs[:n]


class RewardModel(nn.Module):
    """LM trunk + scalar head, with a fixed gain and bias that make its rewards mean 0 / std 1 on the
    reference model's samples (the paper normalises before and after training). Saved as a
    transformers sequence-classification model: `score` is the head, `config.lmpref_reward_gain` /
    `config.lmpref_reward_bias` hold the normalisation and `config.lmpref_pooling` how the head reads
    the trunk:
      'last'  the hidden state of the last response token (the paper; transformers' own reading);
      'mean'  the mean over the response tokens: a sentiment or style judgement is spread over the
              whole response, and averaging gives the head one feature vector per response that a
              few hundred labels can fit (lmpref's small scales).
    A reward model may keep only the lower blocks of its base model (`reward.layers`): the saved
    config then says so (`num_hidden_layers`), and plain transformers loads it as it is.

    A prompted reward model (`reward.template`, `config.lmpref_template_ids`) reads the sequence with
    the template's tokens appended right after the (cut) response - "...response\n\nThe mood of this
    passage is" - and its head may start as the LM's own unembedding of one word minus another
    (`reward.verbalizer`, " positive| negative"): a zero-shot judgement that the labels then refine
    (prompt-based few-shot fine-tuning, as LM-BFF, Gao et al. 2021). Its accuracy before training is
    that prior's, reported as such."""

    def __init__(self, clf: nn.Module):
        super().__init__()
        self.clf = disable_dropout(clf)
        self.pooling = getattr(clf.config, "lmpref_pooling", "last")
        if self.pooling not in POOLINGS:
            raise ModelLoadError(f"reward model pooling {self.pooling!r} is not one of {', '.join(POOLINGS)}")
        self.template = torch.tensor(
            list(getattr(clf.config, "lmpref_template_ids", None) or []), dtype=torch.long
        )  # (m,)
        self.response_only = bool(getattr(clf.config, "lmpref_response_only", False))
        self.register_buffer("gain", torch.tensor(float(getattr(clf.config, "lmpref_reward_gain", 1.0))))
        self.register_buffer("bias", torch.tensor(float(getattr(clf.config, "lmpref_reward_bias", 0.0))))

    @classmethod
    def from_lm(
        cls,
        name: str,
        cache_dir: str = "",
        dtype: str = "float32",
        *,
        pooling: str = "last",
        layers: int = 0,
        template_ids: list[int] | None = None,
        verbalizer_ids: list[tuple[int, int]] | None = None,
        response_only: bool = False,
    ) -> RewardModel:
        """A fresh reward model on a pretrained trunk (its lower `layers` blocks only, when > 0). The
        head is initialised with std 1/sqrt(D+1) as in lm-human-preferences, or, with `verbalizer_ids`
        (a, b), as the LM's unembedding row of token a minus that of token b (the trunk must then be
        whole: the unembedding reads the final layer)."""
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        path = resolve_model(name, cache_dir)
        extra = {"num_hidden_layers": layers} if layers > 0 else {}
        try:
            clf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=DTYPES[dtype], **extra)
            unembed = (
                AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).get_output_embeddings().weight.detach()
                if verbalizer_ids
                else None
            )
        except (OSError, ValueError) as e:
            raise _hub_error(name, e) from e
        clf.config.lmpref_pooling = pooling
        clf.config.lmpref_template_ids = list(template_ids or [])
        clf.config.lmpref_response_only = response_only
        head = clf.score if hasattr(clf, "score") else clf.get_output_embeddings()
        nn.init.normal_(head.weight, std=1 / math.sqrt(clf.config.hidden_size + 1))
        if unembed is not None and verbalizer_ids:
            diffs = torch.stack([unembed[a] - unembed[b] for a, b in verbalizer_ids])
            with torch.no_grad():
                head.weight.copy_(diffs.mean(0, keepdim=True))
        if getattr(head, "bias", None) is not None:
            nn.init.zeros_(head.bias)
        return cls(clf)

    @classmethod
    def load(cls, path: str | Path, dtype: str = "float32") -> RewardModel:
        from transformers import AutoModelForSequenceClassification

        if not (Path(path) / "config.json").exists():
            raise ModelLoadError(
                f"{path} holds no saved reward model (no config.json); train one with `lmpref train-reward`"
            )
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
        if "model_type" not in config:
            raise ModelLoadError(
                f"{path}/config.json has no model_type: not a saved model; give the folder `lmpref train-reward "
                "--out` wrote"
            )
        if "lmpref_reward_gain" not in config:
            what = (
                "a policy (it has value_head.safetensors)"
                if (Path(path) / "value_head.safetensors").exists()
                else f"a {config.get('architectures', ['model'])[0]}"
            )
            raise ModelLoadError(
                f"{path} is {what}, not a reward model (no lmpref_reward_gain in its config.json); "
                "give the folder `lmpref train-reward --out` wrote"
            )
        if not any(Path(path).glob("*.safetensors")) and not any(Path(path).glob("*.bin")):
            raise ModelLoadError(
                f"{path} has a config.json but no weights (*.safetensors); the save was cut short: train the reward "
                "model again"
            )
        return cls(AutoModelForSequenceClassification.from_pretrained(str(path), dtype=DTYPES[dtype]))

    def features(
        self, input_ids, attention_mask, last_index, query_length: int | None = None, *, hidden=None, depth: int = 0
    ) -> torch.Tensor:
        """What the head reads, one vector per sequence (B, D). Queries are left-padded to
        `query_length`, responses follow; `last_index` (B,) is each response's last token. Causal
        attention means tokens after it (a truncated tail) cannot change anything read here. With
        `hidden` (B, T, D) after block `depth` - 1 (lmpref.core.trunk) the blocks below `depth` are skipped
        (not with a template: its tokens are not in `hidden`). A response-only model
        (`config.lmpref_response_only`) drops the query: it reads the tokens from `query_length` on."""
        if self.response_only:
            if hidden is not None:
                raise ValueError(
                    "a response-only reward model cannot start from shared hidden states (they saw the query)"
                )
            if query_length is None:
                raise ValueError(
                    "a response-only reward model needs the padded query length (where the responses start)"
                )
            input_ids, attention_mask = input_ids[:, query_length:], attention_mask[:, query_length:]
            last_index, query_length = (last_index - query_length).clamp(min=0), 0
        if len(self.template):
            if hidden is not None:
                raise ValueError(
                    "a prompted reward model cannot start from shared hidden states (its template tokens are not in "
                    "them)"
                )
            input_ids, attention_mask, last_index = append_after(
                input_ids, attention_mask, last_index, self.template.to(input_ids.device)
            )
        with from_depth(self.clf, hidden, depth):
            h = self.clf.base_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
            ).last_hidden_state  # (B, T, D)
        return pool_response(h, last_index, query_length, self.pooling)

    def raw(self, input_ids, attention_mask, last_index, query_length: int | None = None, **kw) -> torch.Tensor:
        """Unnormalised score of each sequence. (B,)"""
        return self.head(self.features(input_ids, attention_mask, last_index, query_length, **kw))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Unnormalised score from `features` (B, D) -> (B,)."""
        return self.clf.score(features).squeeze(-1).float()

    def forward(self, input_ids, attention_mask, last_index, query_length: int | None = None, **kw) -> torch.Tensor:
        return self.gain * self.raw(input_ids, attention_mask, last_index, query_length, **kw) + self.bias

    def set_normalization(self, gain: float, bias: float) -> None:
        self.gain.fill_(gain)
        self.bias.fill_(bias)

    def save(self, path: str | Path, extra: dict | None = None, tokenizer=None, card: str | None = None) -> None:
        """Write the folder whole (weights, config, `extra` as lmpref_reward.json, the tokenizer,
        `card` as README.md) under a temporary name, then rename: a kill leaves either the old
        folder or the new one."""
        self.clf.config.lmpref_reward_gain = float(self.gain)
        self.clf.config.lmpref_pooling = self.pooling
        self.clf.config.lmpref_template_ids = self.template.tolist()
        self.clf.config.lmpref_reward_bias = float(self.bias)
        path = Path(path)
        # With LoRA the trunk is saved merged (base + adapters): a plain transformers model.
        state = lora.merged_state(self.clf, self.clf.state_dict()) if lora.is_adapted(self.clf) else None
        with atomic_dir(path) as tmp:
            self.clf.save_pretrained(tmp, state_dict=state)
            if extra:
                (tmp / "lmpref_reward.json").write_text(json.dumps(extra, indent=2))
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            if card is not None:
                (tmp / "README.md").write_text(card)


def new_reward_model(cfg: RunConfig, trunk: str, tokenizer, device) -> RewardModel:
    """A fresh reward model on `trunk` as the config asks: its lower `reward.layers` blocks, the
    head's pooling, its template and verbalizer prior, and only the top `reward.trainable_layers`
    blocks (0: only the head) trained."""
    template = tokenizer.encode(cfg.reward.template, add_special_tokens=False) if cfg.reward.template else None
    verbalizer = []
    for pair in cfg.reward.verbalizer.split(";") if cfg.reward.verbalizer else []:
        ids = [tokenizer.encode(w, add_special_tokens=False) for w in pair.split("|")]
        if any(len(i) != 1 for i in ids):
            raise ConfigError(
                f"reward.verbalizer={cfg.reward.verbalizer!r}: each word must be one token of {trunk}'s tokenizer "
                f"({pair!r} gives {[len(i) for i in ids]} tokens); try a common word with its leading space"
            )
        verbalizer.append((ids[0][0], ids[1][0]))
    rm = RewardModel.from_lm(
        trunk,
        cfg.model.cache_dir,
        cfg.model.dtype,
        pooling=cfg.reward.pooling,
        layers=cfg.reward.layers,
        template_ids=template,
        verbalizer_ids=verbalizer or None,
        response_only=cfg.reward.response_only,
    ).to(device)
    layers = cfg.reward.trainable_layers if cfg.reward.trainable_layers >= 0 else cfg.model.trainable_layers
    if cfg.reward.lora_rank:  # adapters on the top `layers` blocks; the base stays frozen (lmpref.core.lora)
        lora.attach(
            rm.clf,
            rank=cfg.reward.lora_rank,
            alpha=cfg.reward.lora_alpha,
            dropout=cfg.reward.lora_dropout,
            spec=cfg.reward.lora_target_modules,
            trainable_layers=layers,
            key="reward.lora_target_modules",
        )
    elif layers == 0:
        rm.clf.requires_grad_(False)  # the trunk stays the base model's, bit for bit (lmpref.core.trunk shares it)
    else:
        freeze_lower_layers(rm.clf, layers)
    rm.clf.score.requires_grad_(True)
    return rm
