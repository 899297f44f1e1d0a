import math

import pytest
import torch

from components.data.formats import expand_ranking
from components.reward.losses import pairwise_accuracy, pairwise_loss


def test_pairwise_loss_on_hand_made_numbers():
    r_c, r_r = torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0])
    # -log sigmoid(d) = log(1 + e^-d) for d = 1, 0, -1
    expected = (math.log1p(math.exp(-1)) + math.log(2) + math.log1p(math.exp(1))) / 3
    assert math.isclose(pairwise_loss(r_c, r_r).item(), expected, rel_tol=1e-6)


def test_margin_shifts_the_difference():
    r_c, r_r = torch.tensor([2.0]), torch.tensor([0.0])
    assert math.isclose(pairwise_loss(r_c, r_r, margin=2.0).item(), math.log(2), rel_tol=1e-6)
    assert pairwise_loss(r_c, r_r, margin=1.0) > pairwise_loss(r_c, r_r)


def test_gradient_pushes_chosen_up_and_rejected_down():
    r_c, r_r = torch.zeros(2, requires_grad=True), torch.zeros(2, requires_grad=True)
    pairwise_loss(r_c, r_r).backward()
    assert (r_c.grad < 0).all() and (r_r.grad > 0).all()


def test_accuracy_counts_ties_as_wrong():
    assert pairwise_accuracy(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 3.0])).item() == pytest.approx(1 / 3)


def test_k_wise_ranking_expands_to_all_ordered_pairs():
    pairs = expand_ranking("p", ["best", "mid", "worst"])
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("best", "mid"), ("best", "worst"), ("mid", "worst")]
    assert len(expand_ranking("p", list("abcde"))) == 10
