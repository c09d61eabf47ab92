"""Batched sampling of fixed-length continuations, log-probs, and the sampling JSONL records.

Shapes: B batch, Q padded query length, R response length, T = Q + R, V vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmpref.config import TaskConfig
from lmpref.core.batching import pad_left
from lmpref.core.responses import postprocess
from lmpref.records import SampleRecord, TaskQuery


@torch.no_grad()
def generate(
    lm, query_ids: torch.Tensor, query_mask: torch.Tensor, *, response_length: int, temperature: float, pad_id: int
) -> torch.Tensor:
    """Sample exactly `response_length` tokens per query (no early stop, as the paper), with the KV
    cache, pure sampling at `temperature` (top_k=0, top_p=1). Returns (B, R) response ids."""
    out = lm.generate(
        input_ids=query_ids,
        attention_mask=query_mask,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=response_length,
        min_new_tokens=response_length,
        pad_token_id=pad_id,
    )
    return out[:, query_ids.shape[1] :]  # (B, R)


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Log-probability of each token under its logits: (B, R, V), (B, R) -> (B, R)."""
    return torch.gather(F.log_softmax(logits, dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`logprobs_of` and the entropy of each position from the same log-softmax, which autograd keeps
    anyway: (B, R, V), (B, R) -> log-probs (B, R), entropy (B, R) (no grad). A second softmax and
    log-softmax over the vocabulary for the entropy alone cost as much as the first."""
    logp = F.log_softmax(logits, dim=-1)  # (B, R, V)
    with torch.no_grad():
        p = logp.exp()
        entropy = -p.mul_(logp).sum(-1)  # one temporary of the logits' size
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1), entropy


def cat_query_response(query_ids, query_mask, responses):
    """(B, Q) + (B, R) -> (B, T) ids and mask: responses are always attended (fixed length)."""
    return torch.cat([query_ids, responses], 1), torch.cat([query_mask, torch.ones_like(responses)], 1)


def sample_records(
    lm,
    tokenizer,
    queries: list[TaskQuery],
    task: TaskConfig,
    *,
    k: int,
    batch_size: int,
    seed: int,
    policy_id: str,
    desc: str = "sampling",
) -> list[dict]:
    """K continuations for every query, as sampling JSONL records (each query's context is run once
    and its KV cache repeated K times; `batch_size` counts sequences):
    {id, query, query_ids, responses, response_ids, valid, policy, seed}. Responses are stored cut
    (text and ids); `valid` is False where the cut rule found no end (never shown to a labeler)."""
    from lmpref.core.trunk import sample

    lm.eval()
    per_batch = max(1, batch_size // k)  # queries per batch: each runs once, its cache repeated k times
    by_query: dict[str, list] = {}
    for start in tqdm(range(0, len(queries), per_batch), desc=desc, unit="batch"):
        chunk = queries[start : start + per_batch]
        torch.manual_seed(seed * 1_000_003 + start)  # reproducible per batch, whatever the batch order
        qids, qmask = pad_left([q.ids for q in chunk], tokenizer.pad_token_id, task.query_length)
        responses = sample(
            lm, qids, qmask, k=k, response_length=task.response_length, temperature=task.temperature
        ).responses  # (B*k, R)
        lengths, valid = postprocess(responses, task, tokenizer)
        for i, (r, n, v) in enumerate(zip(responses.tolist(), lengths.tolist(), valid.tolist())):
            by_query.setdefault(chunk[i // k].id, []).append((r[:n], bool(v)))
    records = []
    for q in queries:
        outs = by_query[q.id]
        rec = SampleRecord(
            id=q.id,
            query=q.text,
            query_ids=q.ids,
            responses=[tokenizer.decode(ids) for ids, _ in outs],
            response_ids=[ids for ids, _ in outs],
            valid=[v for _, v in outs],
            policy=policy_id,
            seed=seed,
            extra=dict(q.extra or {}),
        )
        records.append(rec.to_json())
    return records
