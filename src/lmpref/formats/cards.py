"""Model cards: the README.md that a saved reward model or policy folder carries (what data, which
labels, the algorithm, the figures), in the Hugging Face Hub's form (YAML front matter + Markdown).
Plain text from plain dicts: no torch."""

from __future__ import annotations

import math
from typing import Any

PAPER = "Ziegler et al. 2019, *Fine-Tuning Language Models from Human Preferences* (arXiv:1909.08593)"


def _pct(x: Any) -> str:
    return "n/a" if not isinstance(x, (int, float)) or math.isnan(x) else f"{x:.1%}"


def _front(base: str, tags: list[str]) -> str:
    lines = ["---", "library_name: transformers", "tags:", *[f"- {t}" for t in tags]]
    if base:
        lines.append(f"base_model: {base}")
    return "\n".join([*lines, "---", ""])


def reward_card(metrics: dict[str, Any]) -> str:
    """The card of a reward model saved by `lmpref train-reward` / `train-reward-human`, from the
    metrics it keeps in lmpref_reward.json."""
    ci = metrics.get("accuracy_after_ci") or [float("nan"), float("nan")]
    held = metrics.get("test_labels") or "held out from the labels" + (
        f" by prompt (saved to {metrics['heldout_labels']})" if metrics.get("heldout_labels") else " by prompt"
    )
    rows = [
        ("untrained model", _pct(metrics.get("accuracy_before"))),
        ("trained model", f"{_pct(metrics.get('accuracy_after'))} (95% Wilson CI {_pct(ci[0])}-{_pct(ci[1])})"),
    ]
    if "accuracy_longer_wins" in metrics:
        rows.append(("longer response wins", _pct(metrics["accuracy_longer_wins"])))
    if metrics.get("accuracy_labeler_noise_free") is not None:
        rows.append(("the labeler without its noise (ceiling)", _pct(metrics["accuracy_labeler_noise_free"])))
    rows.append(("chance", _pct(metrics.get("chance"))))
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    settings = {k: metrics[k] for k in ("pooling", "query_length", "response_length", "seed") if k in metrics}
    return (
        _front(str(metrics.get("trunk", "")), ["lmpref", "reward-model", "rlhf"])
        + f"""
# Reward model (lmpref)

A scalar reward model for (query, response) pairs, trained by
lmpref with the best-of-K loss of {PAPER}: the softmax cross-entropy of the
response people labeled best among the K shown. Its rewards are normalised (mean 0, std 1) on
reference responses before and after training.

## Data

- labels: `{metrics.get("labels", "?")}`
- trained on {metrics.get("n_train", "?")} labels; held out: {metrics.get("n_heldout", "?")} labels ({held})
- trunk: `{metrics.get("trunk", "?")}`; settings: {", ".join(f"{k}={v}" for k, v in settings.items()) or "n/a"}

## Held-out accuracy (the labeled-best response ranked first)

| | accuracy |
|---|---|
{table}

Training curves: `<this folder>_metrics.jsonl` beside it (loss, train accuracy, learning rate per step).

## Use

`lmpref.core.reward.RewardModel.load(this_folder)` scores (query, response) pairs as trained (pooling,
template and normalisation are in `config.json`: `lmpref_pooling`, `lmpref_reward_gain`,
`lmpref_reward_bias`); `lmpref train-policy --reward-model this_folder` trains a policy on it.
"""
    )


def policy_card(config: dict[str, Any], state: dict[str, Any], *, reward_model: str = "", algorithm: str = "") -> str:
    """The card of a policy saved by `lmpref train-policy` / `lmpref run` (or `lmpref sft`)."""
    model = config.get("model", {}) if isinstance(config.get("model"), dict) else {}
    task = config.get("task", {}) if isinstance(config.get("task"), dict) else {}
    algo = algorithm or "PPO against the reward model with a KL penalty to the reference model"
    figures = "\n".join(
        f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
        for k, v in state.items()
        if isinstance(v, (int, float, str)) and not isinstance(v, bool) and len(str(v)) < 80
    )
    return (
        _front(str(model.get("name", "")), ["lmpref", "rlhf", "causal-lm"])
        + f"""
# Policy (lmpref)

A causal language model fine-tuned by lmpref ({PAPER}): {algo}.

## Data and settings

- start and reference model: `{model.get("name", "?")}`
- task: `{task.get("name", config.get("preset", "?"))}` (query {task.get("query_length", "?")} tokens,
  response {task.get("response_length", "?")} tokens)
- reward model: `{reward_model or "n/a"}`
- preset `{config.get("preset", "?")}`, scale `{config.get("scale", "?")}`, seed {config.get("seed", "?")};
  the full configuration is `config.json` of the run folder

## Figures

| | |
|---|---|
{figures or "| (none) | |"}

Per-update metrics: `metrics.jsonl` of the run folder; evaluation (win rates, reward, KL): `eval.json`.

## Use

`AutoModelForCausalLM.from_pretrained(this_folder)` (the value head is `value_head.safetensors`, for
resuming PPO only).
"""
    )
