"""The policy with its value head (`PolicyWithValue`), and the layer helpers it shares with the reward
model (`lmpref.core.reward`): the transformer blocks of any causal LM, freezing the lower ones,
position ids from a left-padded mask, running from a given block depth, pooling a response.

Shapes: B batch, T = Q + R tokens (query + response), R response tokens, D hidden size, V vocab.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from lmpref.core.loading import load_causal_lm
from lmpref.io import ModelLoadError

POOLINGS = ("last", "mean")


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
    for block in list(blocks)[len(blocks) - trainable_layers :] if trainable_layers else []:
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


# The lower and the upper pass of a split trunk (lmpref.core.trunk shares the lower one between models)


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
        lm.base_model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids_from_mask(attention_mask)
        )
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


def pool_response(
    hidden: torch.Tensor, last_index: torch.Tensor, query_length: int | None, pooling: str
) -> torch.Tensor:
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
        # The peft.PeftModel around `lm` when it carries LoRA adapters (lmpref.core.lora), else None.
        # Kept outside the module tree: it wraps `lm` itself, whose parameters are registered once, here.
        object.__setattr__(self, "peft", None)

    @property
    def _no_split_modules(self):
        """The LM's block classes: what accelerate's FSDP2 TRANSFORMER_BASED_WRAP shards one by one
        when no `--fsdp_transformer_layer_cls_to_wrap` is given."""
        return getattr(self.lm, "_no_split_modules", None)

    def forward(
        self,
        input_ids,
        attention_mask,
        response_length: int,
        temperature: float = 1.0,
        with_values: bool = True,
        *,
        hidden: torch.Tensor | None = None,
        depth: int = 0,
    ):
        """Logits for the R response tokens (from the positions that predict them) and their values.

        Only the last R+1 positions go through the LM head: the query positions would cost a vocab-sized
        matmul each for nothing. With `hidden` (B, T, D) after block `depth` - 1 (lmpref.core.trunk) the
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
    def save_state(state: dict, path: str | Path, *, like: PolicyWithValue) -> None:
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
    def load(cls, path: str | Path, cache_dir: str = "", dtype: str = "float32") -> PolicyWithValue:
        from safetensors.torch import load_file

        model = cls(load_causal_lm(str(path), cache_dir, dtype))
        vh = Path(path) / "value_head.safetensors"
        if vh.exists():
            model.value_head.load_state_dict(load_file(str(vh)))
        return model
