"""PPO's pure functions on hand-built tensors."""
from __future__ import annotations

import math

import pytest
import torch

from components.ppo.losses import (KL_ESTIMATORS, compute_gae, logprobs_and_entropy, masked_mean, masked_whiten,
                                   policy_loss, value_loss)


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()


def test_gae_with_gamma_lam_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 1.0, 2.0, 0.0], [3.0, -1.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.2, -0.1, 9.0], [1.0, 2.0, 9.0, 9.0]])
    mask = _mask([3, 2], 4)
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    to_go = torch.tensor([[3.0, 3.0, 2.0, 0.0], [2.0, -1.0, 0.0, 0.0]])
    torch.testing.assert_close(adv, (to_go - values) * mask)
    torch.testing.assert_close(ret, to_go * mask)


def test_gae_matches_the_textbook_recursion():
    torch.manual_seed(0)
    rewards, values = torch.randn(1, 5), torch.randn(1, 5)
    gamma, lam, expected, last = 0.9, 0.8, [0.0] * 5, 0.0
    for t in reversed(range(5)):
        next_v = values[0, t + 1].item() if t < 4 else 0.0
        last = rewards[0, t].item() + gamma * next_v - values[0, t].item() + gamma * lam * last
        expected[t] = last
    adv, _ = compute_gae(rewards, values, torch.ones(1, 5), gamma, lam)
    torch.testing.assert_close(adv[0], torch.tensor(expected))


def test_trailing_padding_never_changes_gae():
    torch.manual_seed(1)
    rewards, values, mask = torch.randn(3, 4), torch.randn(3, 4), _mask([4, 2, 3], 4)
    padded = [torch.cat([x, torch.randn(3, 3) * 100], 1) for x in (rewards, values)]
    adv, ret = compute_gae(rewards, values, mask, 0.95, 0.9)
    adv_p, ret_p = compute_gae(*padded, torch.cat([mask, torch.zeros(3, 3)], 1), 0.95, 0.9)
    torch.testing.assert_close(adv_p[:, :4], adv)
    torch.testing.assert_close(ret_p[:, :4], ret)
    assert (adv_p[:, 4:] == 0).all()


def test_masked_whiten_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 1000.0], [4.0, 5.0, -1000.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    w = masked_whiten(x, mask)
    real = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    torch.testing.assert_close(w[mask.bool()], (real - real.mean()) / real.std())
    assert (w[~mask.bool()] == 0).all()
    torch.testing.assert_close(masked_mean(masked_whiten(x, mask, shift_mean=False), mask), real.mean())


def test_policy_loss_has_no_gradient_outside_the_clip_band():
    old = torch.zeros(1, 4)
    new = torch.tensor([[0.5, -0.5, 0.05, 0.5]], requires_grad=True)  # ratios e^.5, e^-.5, e^.05, e^.5
    adv = torch.tensor([[1.0, -1.0, 1.0, -1.0]])
    loss, stats = policy_loss(new, old, adv, torch.ones(1, 4), clip_eps=0.2)
    loss.backward()
    # A>0 with ratio above 1+eps, A<0 with ratio below 1-eps: clipped, no gradient. Inside the band: -A * ratio.
    assert new.grad[0, 0] == 0 and new.grad[0, 1] == 0
    assert new.grad[0, 2].item() == pytest.approx(-math.exp(0.05))
    assert new.grad[0, 3].item() == pytest.approx(math.exp(0.5))  # pessimistic branch stays unclipped
    assert stats["clipfrac"].item() == 2.0
    expected = -1 * 1.2 + (-(-1) * 0.8) + -math.exp(0.05) + math.exp(0.5)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_masked_tokens_do_not_enter_the_policy_loss():
    new = torch.tensor([[0.1, 7.0]], requires_grad=True)
    loss, _ = policy_loss(new, torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([[1.0, 0.0]]), 0.2)
    loss.backward()
    assert new.grad[0, 1] == 0
    assert loss.item() == pytest.approx(-math.exp(0.1))


def test_value_loss_clipping():
    old, ret = torch.zeros(1, 2), torch.tensor([[1.0, 1.0]])
    v = torch.tensor([[0.5, 0.1]], requires_grad=True)
    loss, stats = value_loss(v, old, ret, torch.ones(1, 2), clip=0.2)
    # token 0: unclipped err .25, clipped (0.2-1)^2=.64 -> .64 (no grad); token 1: .81 vs .81
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81))
    loss.backward()
    assert v.grad[0, 0] == 0 and v.grad[0, 1].item() == pytest.approx(-0.9)
    assert stats["vf_clipfrac"].item() == 1.0
    unclipped, _ = value_loss(v, old, ret, torch.ones(1, 2), clip=None)
    assert unclipped.item() == pytest.approx(0.5 * (0.25 + 0.81))


def test_kl_estimators_have_the_right_expectation():
    """Under samples from p, E[k1] = E[k3] = KL(p||q) exactly; k2 is >= 0; k3 is >= 0 pointwise."""
    p = torch.tensor([0.5, 0.3, 0.2])
    q = torch.tensor([0.2, 0.5, 0.3])
    kl = (p * (p / q).log()).sum()
    log_ratio = (p / q).log()  # log p(x) - log q(x) for each outcome x
    for name in ("k1", "k3"):
        assert (p * KL_ESTIMATORS[name](log_ratio)).sum().item() == pytest.approx(kl.item(), rel=1e-5)
    assert (KL_ESTIMATORS["k3"](log_ratio) >= 0).all() and (KL_ESTIMATORS["k2"](log_ratio) >= 0).all()


def test_logprobs_and_entropy():
    logits = torch.log(torch.tensor([[[0.25, 0.25, 0.5]]]))
    logp, ent = logprobs_and_entropy(logits, torch.tensor([[2]]))
    assert logp.item() == pytest.approx(math.log(0.5))
    assert ent.item() == pytest.approx(-(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)))


def test_approx_kl_statistic_is_kl_old_to_new_on_old_samples():
    """Tokens drawn from the old policy: E[approx_kl] must equal the exact KL(old || new), not KL(new || old)."""
    old = torch.tensor([0.8, 0.15, 0.05])
    new = torch.tensor([0.2, 0.3, 0.5])
    exact = float((old * (old / new).log()).sum())  # KL(old || new)
    tokens = torch.arange(3)
    # every token once, weighted by its old probability: the expectation over old samples, exactly
    logp_old, logp_new = old.log()[tokens][None], new.log()[tokens][None]
    weights = old[tokens][None]
    _, stats = policy_loss(logp_new, logp_old, torch.zeros(1, 3), weights, clip_eps=0.2)
    assert stats["approx_kl"].item() == pytest.approx(exact, abs=1e-6)
    x = logp_new - logp_old
    wrong_direction = float((weights * (torch.expm1(-x) + x)).sum())  # k3 applied with the sign flipped
    assert abs(wrong_direction - exact) > 0.05  # so this test fails on that mistake
