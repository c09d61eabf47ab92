"""Batched sampling of fixed-length continuations, log-probs, and the sampling JSONL records.

Shapes: B batch, Q padded query length, R response length, T = Q + R, V vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lmpref.config import TaskConfig
from lmpref.tasks import Query, stop_token_ids, truncate_response


def pad_left(seqs: list[list[int]], pad_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to one length: (B, Q) ids and (B, Q) attention mask."""
    length = length or max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s) > length:
            raise ValueError(f"sequence of {len(s)} tokens does not fit in {length}")
        if s:
            ids[i, length - len(s) :] = torch.tensor(s)
            mask[i, length - len(s) :] = 1
    return ids, mask


@torch.no_grad()
def generate(lm, query_ids: torch.Tensor, query_mask: torch.Tensor, *, response_length: int, temperature: float, pad_id: int) -> torch.Tensor:
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


def cat_query_response(query_ids, query_mask, responses):
    """(B, Q) + (B, R) -> (B, T) ids and mask: responses are always attended (fixed length)."""
    return torch.cat([query_ids, responses], 1), torch.cat([query_mask, torch.ones_like(responses)], 1)


def postprocess(responses: torch.Tensor, task: TaskConfig, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Per response: its length after truncation (B,) and whether it is valid (B,).
    An empty `task.truncate_token` turns the rule off: every response is whole and valid."""
    if not task.truncate_token:
        return torch.full((responses.shape[0],), responses.shape[1]), torch.ones(responses.shape[0], dtype=torch.bool)
    tok = stop_token_ids(tokenizer, task.truncate_token)
    lengths, valid = zip(*(truncate_response(r, tok, task.truncate_after) for r in responses.tolist()))
    return torch.tensor(lengths), torch.tensor(valid)


def sample_records(lm, tokenizer, queries: list[Query], task: TaskConfig, *, k: int, batch_size: int, seed: int, policy_id: str, desc: str = "sampling") -> list[dict]:
    """K continuations for every query, as sampling JSONL records (each query's context is run once
    and its KV cache repeated K times; `batch_size` counts sequences):
    {id, query, query_ids, responses, response_ids, valid, policy, seed}. Responses are stored cut
    (text and ids); `valid` is False where the cut rule found no end (never shown to a labeler)."""
    from lmpref.trunk import sample

    lm.eval()
    per_batch = max(1, batch_size // k)  # queries per batch: each runs once, its cache repeated k times
    by_query: dict[str, list] = {}
    for start in tqdm(range(0, len(queries), per_batch), desc=desc, unit="batch"):
        chunk = queries[start : start + per_batch]
        torch.manual_seed(seed * 1_000_003 + start)  # reproducible per batch, whatever the batch order
        qids, qmask = pad_left([q.ids for q in chunk], tokenizer.pad_token_id, task.query_length)
        responses = sample(lm, qids, qmask, k=k, response_length=task.response_length, temperature=task.temperature).responses  # (B*k, R)
        lengths, valid = postprocess(responses, task, tokenizer)
        for i, (r, n, v) in enumerate(zip(responses.tolist(), lengths.tolist(), valid.tolist())):
            by_query.setdefault(chunk[i // k].id, []).append((r[:n], bool(v)))
    records = []
    for q in queries:
        outs = by_query[q.id]
        rec = {
            "id": q.id,
            "query": q.text,
            "query_ids": q.ids,
            "responses": [tokenizer.decode(ids) for ids, _ in outs],
            "response_ids": [ids for ids, _ in outs],
            "valid": [v for _, v in outs],
            "policy": policy_id,
            "seed": seed,
        }
        if q.extra:
            rec.update(q.extra)
        records.append(rec)
    return records
