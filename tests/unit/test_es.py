"""ES on plain tensors: noise regenerated from seeds and undone bit-exactly, the update's closed form on a small
quadratic, and the shaping functions on hand-made numbers."""
from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from components.es import noise
from components.es.config import ESConfig
from components.es.shaping import centered_rank, zscore


def _params():
    torch.manual_seed(0)
    return [torch.randn(64, 32) * 0.02, torch.zeros(32), torch.randn(5) * 1e-9, torch.randn(7, 3)]


@pytest.mark.parametrize("sigma", [1e-3, 1e-2, 0.5])
def test_perturb_then_restore_gives_bit_identical_weights(sigma):
    params = _params()
    before = [p.clone() for p in params]
    member = noise.Member(seed=123, sign=-1)
    fixes = noise.perturb(params, member, sigma)
    moved = [(p - b).abs().max().item() for p, b in zip(params, before)]
    assert all(m > 0 for m in moved)  # every layer really moved
    # the perturbation is sign * sigma * eps with eps regenerated from (seed, layer index) alone
    torch.testing.assert_close(params[1], -sigma * noise.noise(params[1], 123, 1))
    assert sum(len(i) for i, _ in fixes) > 0  # some elements would not round-trip by subtraction alone
    noise.restore(params, member, sigma, fixes)
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_layers_and_seeds_draw_independent_noise():
    p = torch.zeros(1000)
    a, b, c = noise.noise(p, 1, 0), noise.noise(p, 1, 1), noise.noise(p, 2, 0)
    assert torch.equal(a, noise.noise(p, 1, 0))  # regenerated, not stored
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.1 and abs(torch.corrcoef(torch.stack([a, c]))[0, 1]) < 0.1
    members = noise.population(seed=0, iteration=3, size=6, antithetic=True)
    assert [m.sign for m in members] == [1, -1] * 3 and members[0].seed == members[1].seed != members[2].seed
    assert len({m.seed for m in noise.population(0, 3, 6, antithetic=False)}) == 6


def test_update_is_the_closed_form_and_climbs_a_quadratic():
    target = torch.tensor([1.0, -2.0, 0.5])
    theta = [torch.zeros(3)]
    members = noise.population(seed=0, iteration=0, size=4, antithetic=True)
    weights = [0.5, -0.5, 1.0, -1.0]
    noise.update(theta, members, weights, lr=0.1)
    expected = 0.1 * sum(w * m.sign * noise.noise(theta[0], m.seed, 0) for m, w in zip(members, weights)) / 4
    torch.testing.assert_close(theta[0], expected)
    # maximise -|theta - target|^2 from zero with z-scored rewards: ES walks to the target
    theta, sigma = [torch.zeros(3)], 0.1
    for it in range(300):
        members = noise.population(seed=1, iteration=it, size=16, antithetic=True)
        rewards = []
        for m in members:
            fixes = noise.perturb(theta, m, sigma)
            rewards.append(-((theta[0] - target) ** 2).sum())
            noise.restore(theta, m, sigma, fixes)
        noise.update(theta, members, zscore(torch.stack(rewards)).tolist(), lr=0.02)
    assert ((theta[0] - target) ** 2).sum() < 0.01


def test_adam_state_round_trips():
    params = [torch.zeros(4)]
    adam = noise.Adam(params)
    members = noise.population(0, 0, 2, True)
    noise.update(params, members, [1.0, -1.0], 0.01, adam)
    copy = noise.Adam(params)
    copy.load_state_dict(adam.state_dict())
    a, b = [params[0].clone()], [params[0].clone()]
    noise.update(a, members, [1.0, -1.0], 0.01, adam)
    noise.update(b, members, [1.0, -1.0], 0.01, copy)
    assert torch.equal(a[0], b[0])


def test_shaping_on_hand_made_numbers():
    torch.testing.assert_close(zscore(torch.tensor([1.0, 2.0, 3.0])), torch.tensor([-1.2247, 0.0, 1.2247]),
                               atol=1e-4, rtol=0)
    assert torch.equal(zscore(torch.tensor([2.0, 2.0])), torch.zeros(2))  # no spread, no signal
    torch.testing.assert_close(centered_rank(torch.tensor([10.0, -3.0, 100.0, 0.0, 7.0])),
                               torch.tensor([0.25, -0.5, 0.5, -0.25, 0.0]))
    torch.testing.assert_close(centered_rank(torch.tensor([1.0, 5.0, 5.0])), torch.tensor([-0.5, 0.25, 0.25]))


def test_es_config_errors():
    with pytest.raises(ValidationError, match="antithetic pairs need an even population_size"):
        ESConfig(population_size=5)
    with pytest.raises(ValidationError, match="reward_model is set but no entry of rewards uses it"):
        ESConfig(reward_model={"name_or_path": "x"}, rewards=[{"function": "components.data.gold:gold_scores"}])
