"""Literal-tensor tests of PPO's pure functions."""

import math

import pytest
import torch

from lmpref.core.ppo import AdamTF, AdaptiveKLController, gae, kl_shaped_rewards, ppo_losses, whiten


def test_gae_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 1.0, 1.5]])
    gamma, lam = 0.9, 0.8
    # deltas: t2: 2 - 1.5 = 0.5; t1: 0 + 0.9*1.5 - 1 = 0.35; t0: 1 + 0.9*1.0 - 0.5 = 1.4
    a2 = 0.5
    a1 = 0.35 + 0.9 * 0.8 * a2
    a0 = 1.4 + 0.9 * 0.8 * a1
    adv, ret = gae(rewards, values, gamma, lam)
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2]]))
    assert torch.allclose(ret, adv + values)


def test_gae_gamma1_lam1_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]])
    values = torch.zeros(2, 3)
    adv, _ = gae(rewards, values, 1.0, 1.0)
    assert torch.equal(adv, torch.tensor([[3.0, 3.0, 3.0], [3.0, 2.0, 1.0]]))


def test_whiten():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = whiten(x)
    assert abs(w.mean().item()) < 1e-6
    assert abs(w.var(unbiased=False).item() - 1) < 1e-4
    # shift_mean=False keeps the original mean, only rescales the spread
    w2 = whiten(x, shift_mean=False)
    assert torch.allclose(w2, w + 2.5)


def test_kl_shaped_rewards_puts_score_on_last_token():
    lp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0]])
    rewards, kl = kl_shaped_rewards(lp, ref, torch.tensor([10.0]), kl_coef=0.5)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, -1.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.25, 0.0, 0.5 + 10.0]]))


def test_adaptive_kl_update_by_hand():
    ctl = AdaptiveKLController(0.15, target=6.0, horizon=10_000)
    ctl.update(current_kl=9.0, n_steps=512)  # error clipped to +0.2
    assert math.isclose(ctl.value, 0.15 * (1 + 0.2 * 512 / 10_000))
    ctl2 = AdaptiveKLController(0.15, target=6.0, horizon=10_000)
    ctl2.update(current_kl=5.4, n_steps=1000)  # error -0.1
    assert math.isclose(ctl2.value, 0.15 * (1 - 0.1 * 0.1))
    fixed = AdaptiveKLController(0.2, target=None, horizon=10_000)
    fixed.update(100.0, 512)
    assert fixed.value == 0.2


def test_ppo_losses_clip_by_hand():
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 0.5]]))  # ratios 1.5 and 0.5
    adv = torch.tensor([[1.0, 1.0]])
    values = torch.zeros(1, 2)
    vpred = torch.tensor([[1.0, -0.1]])
    returns = torch.tensor([[2.0, 0.0]])
    pg, vf, st = ppo_losses(new, old, adv, vpred, values, returns, cliprange=0.2, cliprange_value=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(-0.5, -0.8) = -0.5
    assert math.isclose(pg.item(), (-1.2 - 0.5) / 2, rel_tol=1e-6)
    assert st["ppo/policy/clipfrac"] == 0.5
    # value: token 0 clipped pred 0.2: max((1-2)^2, (0.2-2)^2) = 3.24; token 1: max(0.01, 0.01)
    assert math.isclose(vf.item(), 0.5 * (3.24 + 0.01) / 2, rel_tol=1e-5)


def test_adam_tf_eps_placement():
    p = torch.nn.Parameter(torch.tensor([1.0]))
    opt = AdamTF([p], lr=0.1, eps=1e-5)
    p.grad = torch.tensor([0.5])
    opt.step()
    # step 1: m = 0.05, v = 0.00025; lr_t = 0.1*sqrt(0.001)/0.1; update = lr_t * m / (sqrt(v) + eps)
    lr_t = 0.1 * math.sqrt(1 - 0.999) / (1 - 0.9)
    expected = 1.0 - lr_t * 0.05 / (math.sqrt(0.00025) + 1e-5)
    assert p.item() == pytest.approx(expected, rel=1e-6)
    # and it differs from PyTorch's placement (eps inside the bias correction)
    q = torch.nn.Parameter(torch.tensor([1.0]))
    torch_opt = torch.optim.Adam([q], lr=0.1, eps=1e-5)
    q.grad = torch.tensor([0.5])
    torch_opt.step()
    assert q.item() != pytest.approx(p.item(), rel=1e-9, abs=0)
