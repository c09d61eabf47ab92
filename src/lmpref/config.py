"""Typed, nested run configuration; presets are TOML data files; overrides are dotted keys.

Every field has a one-line docstring (the string under it). Presets live in `lmpref/presets/*.toml`
and only name the fields they change. `--scale small|paper` applies the `[scale.<name>]` table of
the preset on top. An unknown key anywhere is an error that names the key and lists the valid ones.

Defaults follow the paper's style-task hyper-parameters (Ziegler et al. 2019, appendix; and
openai/lm-human-preferences `launch.py` as transcribed in vwxyzjn/lm-human-preference-details
`train_policy_accelerate.py`): kl_coef 0.15, adaptive target 6 nats, horizon 10,000 episodes,
1 minibatch, 4 epochs, lr 1e-5, vf_coef 0.1, clip 0.2 / 0.2, gamma 1, lam 0.95, whitened rewards,
Adam eps 1e-5.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

ALGOS = ("ppo", "dpo", "rloo")  # `algo`: how the policy learns from the labels


class ConfigError(ValueError):
    """A configuration problem the user can fix; the message says how."""


@dataclass
class ModelConfig:
    name: str = "smollm2-135m"
    """Policy / reference model: a Hub id (gpt2-large), a local directory, 'smollm2-135m' (bundled) or 'tiny-gpt2'."""
    reward_model: str = ""
    """Trunk the reward model starts from; empty = the same as `name` (as in the paper)."""
    dtype: str = "float32"
    """Weights dtype: float32 | bfloat16 | float16."""
    trainable_layers: int = -1
    """Train only the top N transformer blocks (+ final norm and heads); -1 trains everything."""
    cache_dir: str = ""
    """Where converted models are cached; empty = $LMPREF_CACHE or ~/.cache/lmpref."""
    attn_implementation: str = ""
    """Attention kernel for transformers: sdpa | flash_attention_2 | eager; empty = transformers' default (sdpa)."""
    lora_rank: int = 0
    """LoRA rank of the policy's adapters (peft); 0 = off. On: base frozen, adapters on the top `trainable_layers` blocks, ρ = the base with adapters off."""
    lora_alpha: float = 16.0
    """LoRA scale numerator: the adapter's update is B·A·lora_alpha/lora_rank."""
    lora_dropout: float = 0.0
    """Dropout on the adapters' input while training (> 0 makes PPO's first ratio π/π_old differ from 1)."""
    lora_target_modules: str = ""
    """Comma-separated layer names that get adapters (e.g. q_proj,v_proj or attn.c_attn); '' = every attention projection."""


@dataclass
class TaskConfig:
    name: str = "sentiment"
    """Task name, used in labels and reports."""
    query_dataset: str = "books"
    """Where queries come from: 'books' (the shipped novels), a JSONL of {"text"} / {"query"} to cut passages from, or with `query_column` a prompt dataset (file, folder, Hub id, 'tldr-prompts')."""
    query_column: str = ""
    """Column of `query_dataset` whose rows are whole prompts (one query each); '' = cut passages from texts as the paper did."""
    query_format: str = "text"
    """text | chat: chat renders the column (chat messages [{role, content}], or a string as one user message) with the tokenizer's chat template and its generation prompt."""
    query_length: int = 64
    """Query length in tokens (queries are left-padded to it; a longer prompt from `query_column` keeps its last tokens, so its end and the assistant header stay)."""
    start_text: str = "."
    """A query starts right after the first occurrence of this token ('' = anywhere)."""
    end_text: str = "."
    """A query is cut back to end at the last occurrence of this token ('' = no cut)."""
    min_query_tokens: int = 8
    """Queries shorter than this after cutting are skipped."""
    response_length: int = 24
    """Sampled response length in tokens (fixed: no early stop)."""
    truncate_token: str = "."
    """A response is cut after the first occurrence of this token at or after `truncate_after` ('' = never cut)."""
    truncate_after: int = 16
    """First 0-based response index at which `truncate_token` may end the response."""
    penalty_reward: float = -1.0
    """Reward for a response that never reaches `truncate_token` in the allowed window (never shown to labelers)."""
    temperature: float = 0.7
    """Sampling temperature (logits are divided by it in training too, as the original does)."""
    holdout_fraction: float = 0.1
    """Share of each source text (its end) reserved for held-out evaluation queries."""


@dataclass
class SampleConfig:
    num_queries: int = 5000
    """Queries sampled from the reference model for offline labels (the paper: 5k offline for style)."""
    k: int = 4
    """Continuations per query shown to a labeler."""
    batch_size: int = 32
    """Generation batch size."""


@dataclass
class LabelerConfig:
    name: str = "sentiment"
    """Programmatic labeler: sentiment | descriptiveness (and the summarization labelers)."""
    temperature: float = 0.05
    """Boltzmann-rational noise: P(pick i) ∝ exp(score_i / temperature); 0 = always the top score."""


@dataclass
class RewardConfig:
    lr: float = 5e-5
    """Adam learning rate for the reward model (paper: 5e-5)."""
    epochs: int = 1
    """Passes over the labels (paper: 1)."""
    batch_size: int = 8
    """Labels (each K sequences) per optimizer step."""
    holdout_fraction: float = 0.1
    """Share of labels held out to report accuracy."""
    norm_samples: int = 256
    """Reference-model samples used to set the gain and bias (mean 0, std 1)."""
    trainable_layers: int = -1
    """Train only the top N blocks of the reward trunk; -1 = `model.trainable_layers`; 0 = only the head (on features computed once)."""
    layers: int = 0
    """Keep only the lower N blocks of the base model as the reward trunk; 0 = all of them."""
    pooling: str = "last"
    """What the head reads: 'last' (the last response token's hidden state, the paper) | 'mean' (the mean over the response tokens)."""
    weight_decay: float = 0.0
    """L2 penalty pulling the trained parameters back toward their starting values (L2-SP): with a verbalizer head, toward the zero-shot prior."""
    template: str = ""
    """Text appended right after each response before the head reads the last position (a prompted reward model), e.g. "\n\nThe mood of this passage is"; '' = none."""
    verbalizer: str = ""
    """'A|B' (e.g. ' positive| negative'): the head starts as the LM's unembedding of token A minus token B, a zero-shot prior the labels refine; several pairs 'A|B; C|D' (separated by ';', each word keeps its leading space): the mean of the pairs' differences, i.e. the mean of their zero-shot log-odds; '' = a random head."""
    response_only: bool = False
    """The reward model reads the response alone, the query dropped: a judgement of the continuation's own style or mood (the labeler's), not of the passage it continues. Its trunk then cannot start from the policy's shared hidden states."""
    lora_rank: int = 0
    """LoRA rank on the reward trunk's trained blocks (peft); 0 = off. Saved merged (a plain transformers model)."""
    lora_alpha: float = 16.0
    """LoRA scale numerator of the reward model: the update is B·A·lora_alpha/lora_rank."""
    lora_dropout: float = 0.0
    """Dropout on the reward model's adapters while it trains."""
    lora_target_modules: str = ""
    """Comma-separated layer names of the reward trunk that get adapters; '' = every attention projection."""


@dataclass
class PPOConfig:
    total_episodes: int = 1_000_000
    """Episodes (query, response) to train on (paper: 1M for style tasks at 774M)."""
    batch_size: int = 512
    """Rollout batch: episodes per PPO update (paper: 512 over 8 GPUs)."""
    minibatches: int = 1
    """Minibatches per epoch (paper: 1)."""
    micro_batch_size: int = 0
    """Gradient-accumulation chunk; 0 = the whole minibatch at once; -1 = the largest that fits in memory (probed once)."""
    epochs: int = 4
    """Optimisation epochs over each rollout batch (paper: 4)."""
    lr: float = 1e-5
    """Adam learning rate, linearly annealed to 0 over the run."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0 (the original does)."""
    adam_eps: float = 1e-5
    """Adam epsilon (the original TensorFlow code uses 1e-5)."""
    adam_tf_eps: bool = False
    """Put epsilon outside the bias correction as TensorFlow does (found to matter by lm-human-preference-details)."""
    vf_coef: float = 0.1
    """Value-loss coefficient."""
    cliprange: float = 0.2
    """PPO policy ratio clip."""
    cliprange_value: float = 0.2
    """Value prediction clip."""
    gamma: float = 1.0
    """Discount."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_rewards: bool = True
    """Whiten per-token rewards (without shifting the mean) before GAE."""
    kl_coef: float = 0.15
    """Initial beta of the KL penalty."""
    adaptive_kl: bool = True
    """Adapt beta towards `kl_target` (proportional controller, clipped to ±20%)."""
    kl_target: float = 6.0
    """Target KL(pi || rho) per episode, in nats."""
    kl_horizon: int = 10_000
    """Horizon of the adaptive-KL controller, in episodes."""
    max_grad_norm: float = 0.0
    """Gradient-norm clip; 0 = off (the original has none)."""
    checkpoint_every: int = 10
    """Save a resumable checkpoint every N updates (and at the end)."""
    direction_window: int = 3
    """Direction guard: stop when over this many updates the reward model's score of the policy's samples falls while the score PPO maximises rises (a sign flipped inside PPO); 0 turns it off."""
    mixed_precision: str = "no"
    """no | bf16 | auto: bf16 autocast for every PPO pass, float32 master weights and optimizer state; auto = bf16 where the device runs bf16 in hardware (a bf16 GPU, a CPU with AVX-512 BF16 or AMX), else no."""
    shared_trunk: bool = True
    """Compute the frozen lower blocks once per rollout sequence (in the sampling pass) and run only the upper ones for ρ, the reward model and every PPO epoch (one process; lmpref.core.trunk); false = full forwards (same result, slower)."""
    fast_sampling: str = "auto"
    """on | off | auto (CUDA): sample on a static KV cache and keep the policy's log-probs and values from that pass."""
    compile: str = "off"
    """on | off | auto (CUDA): torch.compile the decode step with CUDA graphs (needs fast_sampling)."""
    fused_adam: str = "auto"
    """on | off | auto (CUDA): torch's fused Adam kernel (not used with adam_tf_eps)."""


@dataclass
class DPOConfig:
    beta: float = 0.1
    """β of the implicit reward β·(log π − log ρ) (Rafailov et al. 2023 use 0.1)."""
    lr: float = 1e-6
    """Adam learning rate, decayed linearly to 0 over the run."""
    epochs: int = 1
    """Passes over the training labels."""
    batch_size: int = 8
    """Labels (each K responses) per optimizer step."""
    holdout_fraction: float = 0.1
    """Share of labels held out (split as the reward model splits them) to report implicit-reward accuracy."""
    max_grad_norm: float = 0.0
    """Gradient-norm clip; 0 = off."""
    checkpoint_every: int = 10
    """Save a resumable checkpoint every N optimizer steps (and at the end)."""
    trunk_cache_mb: int = 4096
    """Keep the output of the shared frozen lower blocks for every labeled pair in memory (fp32, up to this many MB) so each step runs only the trained blocks; 0 = off (the whole model every step)."""


@dataclass
class RLOOConfig:
    k: int = 4
    """Samples per query; each one's baseline is the mean reward of the other K − 1 (leave-one-out)."""
    total_episodes: int = 1_000_000
    """Episodes (query, response) to train on."""
    batch_size: int = 512
    """Episodes per update (batch_size / k queries); a multiple of k."""
    lr: float = 1e-5
    """Adam learning rate."""
    anneal_lr: bool = True
    """Anneal the learning rate linearly to 0."""
    kl_coef: float = 0.15
    """β of the KL penalty in the reward, score − β·Σ(log π − log ρ) per sequence (fixed, not adapted)."""
    max_grad_norm: float = 0.0
    """Gradient-norm clip; 0 = off."""
    checkpoint_every: int = 10
    """Save a resumable checkpoint every N updates (and at the end)."""


@dataclass
class SFTConfig:
    lr: float = 5e-5
    """Adam learning rate of supervised fine-tuning on (query, reference) pairs, decayed linearly to 0."""
    epochs: int = 1
    """Passes over the training pairs."""
    batch_size: int = 8
    """Pairs per optimizer step."""
    eval_pairs: int = 64
    """Held-out pairs (the task's eval split) on which the loss is reported before and after."""


@dataclass
class EvalConfig:
    num_queries: int = 256
    """Held-out queries for the final win-rate comparison."""
    num_samples_shown: int = 5
    """Side-by-side samples printed and saved."""


@dataclass
class ExperimentConfig:
    mode: str = "offline"
    """offline (label rho's samples once) | online (label the current policy while it trains) | batched (rounds: label, wait, retrain, PPO)."""
    rounds: int = 0
    """Reward-model trainings over the run; 0 = the mode's default: offline 1, batched 4, online 20 (the paper retrained about 20 times)."""
    labels: int = 0
    """Comparisons to collect over the whole run; 0 = sample.num_queries."""
    schedule_power: float = 0.5
    """Labels collected by the end of round r of n: labels * ((r + 1) / n) ** power; below 1 front-loads labels, as the paper did."""
    enqueue_every: int = 0
    """Online: sample the policy being trained and enqueue a share of the next round's comparisons after every N-th PPO update; 0 = derived, about sample.batch_size / k comparisons an enqueue."""
    redundancy: int = 1
    """Labelers asked per comparison."""
    validation_share: float = 0.25
    """Share of comparisons from round 1 on that hold k/2 samples of rho and k/2 of the current policy: the labelers' win rate of the policy."""
    poll_seconds: float = 5.0
    """How often the loop looks at the label store while it waits (it sleeps in between)."""
    reward_guard_margin: float = 0.0
    """Before PPO the new reward model's held-out accuracy must exceed chance by this (catches a flipped sign); negative turns the guard off."""
    hacking_win_drop: float = 0.1
    """Pull the cord when the policy's mean reward rose since the previous round while the labelers' win rate fell by more than this."""
    min_validation_labels: int = 10
    """Validation labels a round needs before its win rate is judged by the reward-hacking guard."""
    kl_guard_factor: float = 3.0
    """Pull the cord when a PPO update's KL exceeds this times ppo.kl_target; 0 = off."""
    evaluate: bool = True
    """Run `evaluate` (win rate vs rho, reward, KL on held-out queries) when the run ends."""
    store_run: str = ""
    """Run name in the label store; empty = the run directory's name."""

    def num_rounds(self) -> int:
        return self.rounds or {"offline": 1, "batched": 4, "online": 20}[self.mode]


@dataclass
class RunConfig:
    preset: str = "sentiment"
    """The preset this config came from."""
    scale: str = "small"
    """The size table applied from the preset: small | paper (| tiny for tests)."""
    seed: int = 0
    """Seed for every random choice (queries, sampling, labeler noise, init, shuffles)."""
    run_dir: str = ""
    """Output directory; empty = runs/<preset>-<scale>-seed<seed>."""
    threads: int = 0
    """torch CPU threads; 0 = leave torch's default."""
    algo: str = "ppo"
    """How the policy learns from the labels: ppo (reward model + PPO) | dpo (K-way DPO on the labels, no reward model) | rloo (reward model + REINFORCE with a leave-one-out baseline)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    labeler: LabelerConfig = field(default_factory=LabelerConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rloo: RLOOConfig = field(default_factory=RLOOConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

    def policy_updates(self) -> int:
        """Updates of the policy-gradient trainer over the run: PPO's, or RLOO's with `algo = rloo`."""
        t = self.rloo if self.algo == "rloo" else self.ppo
        return t.total_episodes // t.batch_size

    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir or f"runs/{self.preset}-{self.scale}-seed{self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Check derived sizes once so a bad combination fails before any model loads."""
        if self.algo not in ALGOS:
            raise ConfigError(f"algo={self.algo!r}: choose one of {', '.join(ALGOS)}")
        d, r = self.dpo, self.rloo
        for name in ("epochs", "batch_size", "checkpoint_every"):
            if getattr(d, name) < 1:
                raise ConfigError(f"dpo.{name}={getattr(d, name)} must be at least 1 (set it with --set dpo.{name}=N)")
        if d.beta <= 0 or not 0 <= d.holdout_fraction < 1:
            raise ConfigError("dpo.beta must be > 0 and dpo.holdout_fraction must lie in [0, 1)")
        for name in ("k", "batch_size", "total_episodes", "checkpoint_every"):
            if getattr(r, name) < 1:
                raise ConfigError(
                    f"rloo.{name}={getattr(r, name)} must be at least 1 (set it with --set rloo.{name}=N)"
                )
        if r.k < 2 or r.batch_size % r.k:
            raise ConfigError(f"rloo.batch_size={r.batch_size} must be a multiple of rloo.k={r.k}, and k at least 2")
        if r.total_episodes < r.batch_size:
            raise ConfigError(f"rloo.total_episodes={r.total_episodes} is smaller than one batch ({r.batch_size})")
        p = self.ppo
        for name in ("batch_size", "minibatches", "total_episodes", "epochs", "checkpoint_every"):
            if getattr(p, name) < 1:
                raise ConfigError(f"ppo.{name}={getattr(p, name)} must be at least 1 (set it with --set ppo.{name}=N)")
        if p.batch_size % p.minibatches:
            raise ConfigError(f"ppo.batch_size={p.batch_size} must be divisible by ppo.minibatches={p.minibatches}")
        mb = p.batch_size // p.minibatches
        if p.micro_batch_size > 0 and mb % p.micro_batch_size:
            raise ConfigError(f"minibatch size {mb} must be divisible by ppo.micro_batch_size={p.micro_batch_size}")
        if p.total_episodes < p.batch_size:
            raise ConfigError(f"ppo.total_episodes={p.total_episodes} is smaller than one batch ({p.batch_size})")
        if self.reward.verbalizer and any(
            pair.count("|") != 1 or not all(pair.split("|")) for pair in self.reward.verbalizer.split(";")
        ):
            raise ConfigError(
                f"reward.verbalizer={self.reward.verbalizer!r}: write two words as 'A|B', e.g. ' positive| negative', "
                "or several pairs separated by ';', e.g. ' positive| negative; good| bad'"
            )
        if self.reward.verbalizer and self.reward.layers:
            raise ConfigError(
                "reward.verbalizer reads the LM's unembedding, which needs the whole trunk: set reward.layers=0"
            )
        if self.reward.pooling not in ("last", "mean"):
            raise ConfigError(f"reward.pooling={self.reward.pooling!r}: choose 'last' or 'mean'")
        if self.reward.layers < 0:
            raise ConfigError(f"reward.layers={self.reward.layers}: give a number of blocks, or 0 for all of them")
        if not 2 <= self.sample.k <= 16:
            raise ConfigError(f"sample.k={self.sample.k}: choose between 2 and 16 continuations per query")
        if self.task.query_format not in ("text", "chat"):
            raise ConfigError(f"task.query_format={self.task.query_format!r}: use text or chat")
        if self.task.query_format == "chat" and not self.task.query_column:
            raise ConfigError("task.query_format=chat renders a prompt column: name it with task.query_column")
        if not 0 <= self.task.truncate_after < self.task.response_length:
            raise ConfigError("task.truncate_after must lie inside the response (0 <= it < task.response_length)")
        if self.task.temperature <= 0:
            raise ConfigError("task.temperature must be > 0")
        if p.micro_batch_size < -1:
            raise ConfigError(
                f"ppo.micro_batch_size={p.micro_batch_size}: use a size, 0 (whole minibatch) or -1 (fit to memory)"
            )
        if p.mixed_precision not in ("no", "bf16", "auto"):
            raise ConfigError(f"ppo.mixed_precision={p.mixed_precision!r}: use no, bf16 or auto")
        for name in ("fast_sampling", "compile", "fused_adam"):
            if getattr(p, name) not in ("on", "off", "auto"):
                raise ConfigError(f"ppo.{name}={getattr(p, name)!r}: use on, off or auto")
        self._check_lora()
        if self.model.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"model.dtype={self.model.dtype!r}: use float32, bfloat16 or float16")
        e = self.experiment
        if e.mode not in ("offline", "online", "batched"):
            raise ConfigError(f"experiment.mode={e.mode!r}: use offline, online or batched")
        if e.rounds < 0 or (e.mode == "offline" and e.num_rounds() != 1):
            raise ConfigError(
                f"experiment.rounds={e.rounds}: offline mode has exactly 1 round; others need >= 1 (0 = default)"
            )
        if (e.labels or self.sample.num_queries) < e.num_rounds():
            raise ConfigError(
                f"experiment.labels={e.labels or self.sample.num_queries} is fewer than one per round "
                f"({e.num_rounds()} rounds)"
            )
        if not 0 <= e.validation_share < 1 or (e.validation_share and self.sample.k % 2):
            raise ConfigError(
                "experiment.validation_share must lie in [0, 1), and validation needs an even sample.k (k/2 from rho, "
                "k/2 from the policy)"
            )
        if e.schedule_power <= 0 or e.poll_seconds <= 0 or not 1 <= e.redundancy <= 100:
            raise ConfigError("experiment.schedule_power and poll_seconds must be > 0 and experiment.redundancy 1-100")
        if e.enqueue_every < 0:
            raise ConfigError(
                f"experiment.enqueue_every={e.enqueue_every}: enqueue after every N >= 1 PPO updates, or 0 (derived)"
            )

    def _check_lora(self) -> None:
        reward_layers = (
            self.reward.trainable_layers if self.reward.trainable_layers >= 0 else self.model.trainable_layers
        )
        for sec, obj, layers in (
            ("model", self.model, self.model.trainable_layers),
            ("reward", self.reward, reward_layers),
        ):
            if obj.lora_rank < 0:
                raise ConfigError(f"{sec}.lora_rank={obj.lora_rank}: give a rank >= 1 (e.g. 8), or 0 for no LoRA")
            if not obj.lora_rank:
                continue
            if obj.lora_alpha <= 0 or not 0 <= obj.lora_dropout < 1:
                raise ConfigError(f"{sec}.lora_alpha must be > 0 and {sec}.lora_dropout in [0, 1)")
            if layers == 0:
                raise ConfigError(
                    f"{sec}.lora_rank={obj.lora_rank} with no trained block ({sec}.trainable_layers=0): "
                    f"set {sec}.trainable_layers to -1 or N >= 1, or {sec}.lora_rank=0"
                )


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _coerce(value: Any, current: Any, key: str) -> Any:
    """Turn a CLI string (or TOML value) into the type of the field it replaces."""
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    try:
        if isinstance(current, int):
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if isinstance(current, float):
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected a {type(current).__name__}, got {value!r}") from None
    return str(value) if isinstance(current, str) else value


def apply_overrides(cfg: Any, overrides: dict[str, Any], prefix: str = "") -> None:
    """Set dotted keys (`ppo.lr`, `task.query_length`) on a nested dataclass; unknown keys are errors."""
    for key, value in overrides.items():
        obj, parts = cfg, key.split(".")
        for i, part in enumerate(parts):
            names = _field_names(type(obj))
            if part not in names:
                where = ".".join(parts[:i]) or "the top level"
                raise ConfigError(
                    f"unknown config key {prefix}{key!r}: {part!r} is not a field of {where}; "
                    f"valid fields there: {', '.join(names)}"
                )
            if i == len(parts) - 1:
                current = getattr(obj, part)
                if dataclasses.is_dataclass(current):
                    if not isinstance(value, dict):
                        raise ConfigError(
                            f"{prefix}{key} is a section; set one of its fields, e.g. "
                            f"{key}.{_field_names(type(current))[0]}"
                        )
                    apply_overrides(current, value, prefix=f"{prefix}{key}.")
                else:
                    setattr(obj, part, _coerce(value, current, prefix + key))
            else:
                obj = getattr(obj, part)
                if not dataclasses.is_dataclass(obj):
                    raise ConfigError(
                        f"unknown config key {prefix}{key!r}: {'.'.join(parts[: i + 1])} is not a section"
                    )


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("lmpref.presets").iterdir() if p.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    """A preset by name, or a path to a TOML file of the same shape."""
    path = Path(name)
    if name.endswith(".toml") and path.exists():
        return tomllib.loads(path.read_text())
    res = resources.files("lmpref.presets") / f"{name}.toml"
    if not res.is_file():
        raise ConfigError(
            f"unknown preset {name!r}; available: {', '.join(preset_names())} (or a path to a .toml file)"
        )
    return tomllib.loads(res.read_text())


def parse_override_args(items: list[str]) -> dict[str, str]:
    """['ppo.lr=3e-5', 'seed=1'] -> {'ppo.lr': '3e-5', 'seed': '1'}."""
    out: dict[str, str] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. ppo.lr=3e-5)")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def make_config(preset: str = "sentiment", scale: str = "small", overrides: dict[str, Any] | None = None) -> RunConfig:
    """Defaults, then the preset, then its `[scale.<scale>]` table, then the overrides."""
    data = load_preset(preset)
    scales = data.pop("scale", {})
    cfg = RunConfig(preset=Path(preset).stem if preset.endswith(".toml") else preset, scale=scale)
    apply_overrides(cfg, data)
    if scale not in scales:
        raise ConfigError(f"preset {preset!r} has no scale {scale!r}; available: {', '.join(scales) or 'none'}")
    apply_overrides(cfg, scales[scale])
    apply_overrides(cfg, overrides or {})
    cfg.check()
    return cfg


def save_config(cfg: RunConfig, path: Path) -> None:
    from lmpref.io import atomic_write_text

    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2))


# Fields that change how a run is computed or stored, never what it computes: a resume may change them.
RESUME_FREE = {
    "run_dir",
    "model.cache_dir",
    "model.attn_implementation",
    "ppo.checkpoint_every",
    "dpo.checkpoint_every",
    "rloo.checkpoint_every",
    "ppo.micro_batch_size",
    "ppo.fast_sampling",
    "ppo.compile",
    "ppo.fused_adam",
    "sample.batch_size",
    "experiment.poll_seconds",
}


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_resume(cfg: RunConfig, path: Path, allow: bool = False, may_grow: tuple[str, ...] = ()) -> None:
    """`--resume` continues the run saved in `path` (its config.json): a config that differs in
    anything that changes results would label, train or evaluate a different run on top of this
    one's files. Raise naming the keys, unless `allow` (--allow-config-change). Keys in `may_grow`
    may rise (e.g. `ppo.total_episodes` for `train-policy --resume`: train on for longer)."""
    if not path.exists():
        return
    try:
        saved = _flat(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{path} is not a readable config; restore it or start a new --run-dir") from None
    now = _flat(cfg.to_dict())

    def grew(k: str) -> bool:
        old, new = saved.get(k), now.get(k)
        return k in may_grow and isinstance(old, (int, float)) and isinstance(new, (int, float)) and new >= old

    changed = sorted(
        k for k in saved.keys() | now.keys() if k not in RESUME_FREE and saved.get(k) != now.get(k) and not grew(k)
    )
    if changed and not allow:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:8]) + (
            " ..." if len(changed) > 8 else ""
        )
        raise ConfigError(
            f"--resume with a config that differs from the run's {path} in {shown}; "
            "resume with the run's own settings, choose a new --run-dir, or pass --allow-config-change"
        )
