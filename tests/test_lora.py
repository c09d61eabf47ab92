"""LoRA through peft (lmpref.core.lora): ρ is the policy's base with its adapters off, exactly, before and
after training; a tiny LoRA policy learns under RLOO; saved adapters load with plain peft and merged
weights with plain transformers, with the in-memory policy's logits; a bad LoRA config is one line
before any work; a killed LoRA run resumes to the policy of an unbroken one."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmpref.cli import main
from lmpref.config import ModelConfig
from lmpref.core import lora
from lmpref.core.loading import load_causal_lm
from lmpref.core.models import PolicyWithValue, lower_hidden
from lmpref.core.trunk import shared_depth
from lmpref.io import read_jsonl
from rloo_fixtures import VOCAB, assert_learned, run_tiny_rloo, tiny_rloo_config

TINY = ["--preset", "test", "--scale", "tiny"]
KILL_AT = str(Path(__file__).parent / "kill_at.py")


def _lora_policy(rank: int = 4, trainable_layers: int = -1, **kw) -> PolicyWithValue:
    policy = PolicyWithValue(load_causal_lm("tiny-gpt2"))
    lora.adapt_policy(policy, ModelConfig(lora_rank=rank, trainable_layers=trainable_layers, **kw))
    return policy


def _batch(n: int = 3, t: int = 12):
    torch.manual_seed(1)
    ids = torch.randint(1, 5000, (n, t))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # one left-padded row
    return ids, mask


def _train_some_steps(policy: PolicyWithValue, steps: int = 5) -> None:
    ids, mask = _batch()
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        logits, values = policy(ids, mask, 4)
        loss = -logits.log_softmax(-1)[..., 7].mean() + values.pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_only_adapters_and_the_value_head_train_on_the_attention_projections():
    policy = _lora_policy(trainable_layers=1)
    trained = sorted(n for n, p in policy.named_parameters() if p.requires_grad)
    assert trained == [
        "lm.transformer.h.1.attn.c_attn.lora_A.default.weight",
        "lm.transformer.h.1.attn.c_attn.lora_B.default.weight",
        "lm.transformer.h.1.attn.c_proj.lora_A.default.weight",
        "lm.transformer.h.1.attn.c_proj.lora_B.default.weight",
        "value_head.bias",
        "value_head.weight",
    ]


@pytest.mark.parametrize("trainable_layers", [-1, 1])
def test_adapters_off_is_rho_exactly_before_and_after_training(trainable_layers):
    ref = PolicyWithValue(load_causal_lm("tiny-gpt2")).eval()
    policy = _lora_policy(trainable_layers=trainable_layers)
    rho = lora.AdaptersOff(policy)
    ids, mask = _batch()
    want, _ = ref(ids, mask, 4, 0.7)
    got, _ = rho(ids, mask, 4, 0.7)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    before, _ = policy(ids, mask, 4, 0.7)
    _train_some_steps(policy)
    after, _ = policy(ids, mask, 4, 0.7)
    assert (after - before).abs().max() > 1e-2  # the adapters moved the policy
    got, _ = rho(ids, mask, 4, 0.7)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)  # ... and not ρ
    assert all(p.requires_grad for n, p in policy.named_parameters() if "lora_" in n)  # switched back on
    # The shared frozen trunk: the blocks without adapters are shared with ρ, and ρ from there is exact.
    depth = shared_depth(policy.lm, rho.lm)
    assert depth == (0 if trainable_layers == -1 else 1)
    if depth:
        hidden = lower_hidden(policy.lm, ids, mask, depth)
        got, _ = rho(ids, mask, 4, 0.7, hidden=hidden, depth=depth)
        assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_saved_adapter_loads_with_peft_and_merged_weights_with_transformers(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from lmpref.steps.checkpoint import save_policy

    policy = _lora_policy(rank=4, trainable_layers=-1, lora_target_modules="c_attn,c_fc")
    _train_some_steps(policy)
    policy.eval()
    save_policy(policy.state_dict(), tmp_path, like=policy)
    assert (tmp_path / "config.json").exists() and (tmp_path / "value_head.safetensors").exists()
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    ids, mask = _batch()
    want = policy.lm(input_ids=ids).logits
    merged = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.allclose(merged(input_ids=ids).logits, want, atol=1e-4, rtol=0)
    adapted = PeftModel.from_pretrained(load_causal_lm("tiny-gpt2"), str(tmp_path / "adapter"))
    assert torch.allclose(adapted(input_ids=ids).logits, want, atol=1e-5, rtol=0)
    again = PolicyWithValue.load(tmp_path)  # lmpref's own loader reads the merged folder as any policy
    assert torch.equal(again.value_head.weight, policy.value_head.weight)


def test_rloo_with_lora_raises_reward_with_kl_bounded_and_base_weights_untouched():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = tiny_rloo_config(**{"model.lora_rank": 8})  # on the default targets: the attention projections
    # Embeddings of std 0.3, not GPT-2's 0.02: the LM head is tied to them and frozen under LoRA, so with
    # tiny ones no change of the hidden state could move the logits far (full fine-tuning rescales them).
    config = GPT2Config(vocab_size=VOCAB, n_layer=2, n_embd=32, n_head=2, n_positions=64, initializer_range=0.3)
    policy = PolicyWithValue(GPT2LMHeadModel(config))
    lora.adapt_policy(policy, cfg.model)
    policy.value_head.requires_grad_(False)  # RLOO has no value function
    base = {n: p.detach().clone() for n, p in policy.lm.named_parameters() if "lora_" not in n}
    adapters = {n: p.detach().clone() for n, p in policy.lm.named_parameters() if "lora_" in n}
    assert_learned(*run_tiny_rloo(policy, lora.AdaptersOff(policy), cfg))  # ρ: the base, adapters off
    assert all(torch.equal(p, base[n]) for n, p in policy.lm.named_parameters() if n in base)
    moved = [n for n, p in policy.lm.named_parameters() if n in adapters and not torch.equal(p, adapters[n])]
    assert sorted(moved) == sorted(adapters)


# ---------------------------------------------------------------------------------------------
# The command


@pytest.mark.parametrize(
    "setting, message",
    [
        (["model.lora_rank=-1"], "model.lora_rank=-1: give a rank >= 1"),
        (["reward.lora_rank=-2"], "reward.lora_rank=-2: give a rank >= 1"),
        (["model.lora_rank=4", "model.trainable_layers=0"], "model.lora_rank=4 with no trained block"),
        (
            ["model.lora_rank=4", "model.lora_target_modules=q_proj,c_attn"],
            "model.lora_target_modules='q_proj,c_attn': q_proj is no linear layer",
        ),
        (["reward.lora_rank=4", "reward.lora_target_modules=up_proj"], "reward.lora_target_modules='up_proj'"),
    ],
)
def test_a_bad_lora_config_is_one_line_before_any_work(tmp_path, capsys, setting, message):
    run = tmp_path / "run"
    argv = ["run", *TINY, "--run-dir", str(run)]
    for s in setting:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not run.exists()  # nothing was sampled


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora-rm")
    assert main(["sample", *TINY, "--out", str(d / "s.jsonl")]) == 0
    assert main(["label", str(d / "s.jsonl"), "--labeler", "sentiment", "--out", str(d / "l.jsonl")]) == 0
    argv = ["train-reward", *TINY, "--labels", str(d / "l.jsonl"), "--samples", str(d / "s.jsonl")]
    assert main([*argv, "--out", str(d / "rm"), "--set", "reward.lora_rank=4"]) == 0  # a LoRA reward model
    return d / "rm"


def _policy_argv(rm, run):
    return [
        "train-policy",
        *TINY,
        "--reward-model",
        str(rm),
        "--run-dir",
        str(run),
        "--set",
        "model.lora_rank=4",
        "--set",
        "model.trainable_layers=1",
    ]


def test_lora_reward_model_saves_merged_and_a_killed_lora_ppo_run_resumes_to_the_unbroken_policy(
    reward_model, tmp_path
):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(reward_model)  # merged: plain transformers reads it
    assert not any("lora_" in k for k in load_file(str(reward_model / "model.safetensors")))
    argv = _policy_argv(reward_model, tmp_path / "killed")
    cmd = [sys.executable, KILL_AT, "update:2", "--", *argv]
    assert subprocess.run(cmd, capture_output=True, text=True, timeout=900).returncode == -9
    ckpt = tmp_path / "killed" / "checkpoints"
    latest = ckpt / (ckpt / "latest").read_text()
    assert json.loads((latest / "state.json").read_text())["update"] == 1
    assert (latest / "adapter" / "adapter_model.safetensors").exists()
    assert main([*argv, "--resume"]) == 0
    assert [r["step"] for _, r in read_jsonl(tmp_path / "killed" / "metrics.jsonl")] == [1, 2, 2]
    assert main(_policy_argv(reward_model, tmp_path / "whole")) == 0
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        a = load_file(str(tmp_path / "killed" / "policy" / name))
        b = load_file(str(tmp_path / "whole" / "policy" / name))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), name


def test_dpo_with_lora_trains_the_adapters_against_the_base_as_rho(reward_model, tmp_path):
    labels = reward_model.parent / "l.jsonl"
    run = tmp_path / "dpo"
    argv = ["train-policy", *TINY, "--algo", "dpo", "--labels", str(labels), "--run-dir", str(run)]
    assert main([*argv, "--set", "model.lora_rank=4"]) == 0
    assert (run / "policy" / "adapter" / "adapter_config.json").exists() and (run / "dpo.json").exists()
