"""Responses: the truncation rule (cut after the first stop token at or after `truncate_after`) and
the penalty for responses that never reach one (the paper's -1), in one place for sampling, the
reward, PPO and evaluation."""

from __future__ import annotations

import torch

from lmpref.config import ConfigError, TaskConfig


def single_token_id(tokenizer, text: str) -> int:
    """The id of a token given as text ('.'); it must be one token for the rules to be exact."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:
        raise ConfigError(
            f"{text!r} is {len(ids)} tokens for this tokenizer; truncate_token/start_text must be one token"
        )
    return ids[0]


_STOP_CACHE: dict[tuple[int, str], set[int]] = {}


def stop_token_ids(tokenizer, text: str) -> set[int]:
    """Ids of the tokens that end a response: `text` itself (one token) and, for a newline, every
    token made only of newlines (GPT-2 has "\n" = 198 and "\n\n" = 628; either ends a summary)."""
    key = (id(tokenizer), text)
    if key in _STOP_CACHE:
        return _STOP_CACHE[key]
    ids = {single_token_id(tokenizer, text)}
    if text.strip() == "":
        vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
        for tok_id in vocab.values():
            decoded = tokenizer.decode([tok_id])
            if decoded and decoded.strip("\n") == "" and text in decoded:
                ids.add(tok_id)
    _STOP_CACHE[key] = ids
    return ids


def truncate_response(ids: list[int], stop: int | set[int], after: int) -> tuple[int, bool]:
    """Length of the response once cut just after the first stop token at index >= `after`, and
    whether one was found; unfound: the full length and False (that response earns the penalty and is
    never shown to a labeler). The rule of lm-human-preferences' `postprocess_responses`."""
    stops = {stop} if isinstance(stop, int) else stop
    for i in range(after, len(ids)):
        if ids[i] in stops:
            return i + 1, True
    return len(ids), False


def postprocess(responses: torch.Tensor, task: TaskConfig, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """Per response: its length after truncation (B,) and whether it is valid (B,).
    An empty `task.truncate_token` turns the rule off: every response is whole and valid."""
    if not task.truncate_token:
        return torch.full((responses.shape[0],), responses.shape[1]), torch.ones(responses.shape[0], dtype=torch.bool)
    tok = stop_token_ids(tokenizer, task.truncate_token)
    lengths, valid = zip(*(truncate_response(r, tok, task.truncate_after) for r in responses.tolist()))
    return torch.tensor(lengths), torch.tensor(valid)


def apply_penalty(scores: torch.Tensor, valid: torch.Tensor, penalty: float) -> torch.Tensor:
    """Responses that never reached the truncation token get a fixed penalty instead of their
    reward-model score (lm-human-preferences `penalty_reward_value`). (B,), (B,) -> (B,)"""
    return torch.where(valid.to(scores.device), scores, torch.full_like(scores, penalty))
