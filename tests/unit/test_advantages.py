"""Critic-free advantage estimators and loss aggregations on hand-built groups."""
from __future__ import annotations

import pytest
import torch

from components.ppo.advantages import (group_ids, group_order, grpo_advantages, reinforce_pp_advantages, rloo_advantages,
                                       token_weights, zero_std_fraction)

KEEP = torch.ones(6, dtype=torch.bool)


def test_groups_follow_the_gather_order_of_ranks():
    # 2 ranks, groups of 2: rank 0 holds slots 0, 2 as rows [s0 s0 s2 s2], rank 1 slots 1, 3; the gather interleaves
    assert group_ids(8, 2, 2).tolist() == [0, 1, 0, 1, 2, 3, 2, 3]
    assert group_ids(6, 1, 3).tolist() == [0, 0, 0, 1, 1, 1]


def test_grpo_normalises_within_each_group_and_a_flat_group_gets_nothing():
    scores, groups = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0]), group_ids(6, 1, 3)
    adv = grpo_advantages(scores, groups, KEEP)
    assert adv[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-3)  # (r - 2) / std 1
    assert adv[3:].tolist() == [0.0, 0.0, 0.0]
    assert grpo_advantages(scores, groups, KEEP, scale=False)[:3].tolist() == [-1.0, 0.0, 1.0]  # Dr. GRPO
    assert zero_std_fraction(scores, groups, KEEP) == 0.5


def test_rloo_baseline_is_the_mean_of_the_other_samples_and_its_closed_form():
    scores, groups = torch.tensor([1.0, 2.0, 6.0, 0.0, 4.0, 8.0]), group_ids(6, 1, 3)
    adv = rloo_advantages(scores, groups, KEEP)
    assert adv[0].item() == pytest.approx(1.0 - (2.0 + 6.0) / 2)
    g = 3  # G / (G - 1) * (r - group mean)
    closed = torch.cat([(scores[:3] - scores[:3].mean()), (scores[3:] - scores[3:].mean())]) * g / (g - 1)
    assert adv.tolist() == pytest.approx(closed.tolist())


def test_a_dropped_sample_leaves_its_group_baseline():
    scores, groups = torch.tensor([1.0, 3.0, 100.0]), torch.zeros(3, dtype=torch.long)
    keep = torch.tensor([True, True, False])
    assert rloo_advantages(scores, groups, keep).tolist() == [-2.0, 2.0, 0.0]
    assert grpo_advantages(scores, groups, keep, scale=False).tolist() == [-1.0, 1.0, 0.0]


def test_reinforce_pp_whitens_returns_over_the_batch_with_padding():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # ragged: the second response has 2 tokens
    adv = reinforce_pp_advantages(rewards, mask)
    returns = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0])  # reverse cumulative sums inside the mask
    expected = (returns - returns.mean()) / returns.std()
    assert adv[mask.bool()].tolist() == pytest.approx(expected.tolist(), abs=1e-4)
    assert adv[1, 2].item() == 0.0


def test_loss_aggregations_weigh_tokens_as_their_methods_define():
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])  # 4 and 1 tokens
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0]])
    n = mask.sum()  # the update divides every weighted token sum by the minibatch's token count

    def aggregate(how):
        return ((loss * token_weights(mask, how, max_tokens=4)).sum() / n).item()

    assert aggregate("token_mean") == pytest.approx(9.0 / 5)  # DAPO / PPO: all tokens equal
    assert aggregate("sequence_mean") == pytest.approx((1.0 + 5.0) / 2)  # GRPO: sequences equal
    assert aggregate("constant") == pytest.approx((4.0 + 5.0) / (2 * 4))  # Dr. GRPO: fixed normaliser


@pytest.mark.parametrize("world_size", [1, 2])
def test_minibatches_cut_from_the_shuffle_hold_whole_groups(world_size):
    groups = group_ids(24, world_size, group_size=4)  # 6 prompts x 4 samples, gathered from `world_size` ranks
    order = group_order(groups, torch.Generator().manual_seed(5))
    assert sorted(order.tolist()) == list(range(24))  # a permutation of the rows
    minibatches = groups[order].view(3, 8)  # 3 minibatches of 8 samples = 2 whole groups each
    assert all(len(set(mb.tolist())) == 2 and (mb.bincount()[mb.unique()] == 4).all() for mb in minibatches)
    assert groups[order].tolist() != sorted(groups.tolist())  # the groups are shuffled, not left in order
    singles = torch.arange(10)  # one sample per prompt (PPO): exactly torch.randperm, so PPO runs are unchanged
    assert group_order(singles, torch.Generator().manual_seed(5)).tolist() == \
        torch.randperm(10, generator=torch.Generator().manual_seed(5)).tolist()
