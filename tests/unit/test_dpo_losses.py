"""The DPO-family losses on hand-computed numbers: values, gradient signs, and their limits."""
import math

import pytest
import torch

from components.dpo.losses import LOSSES, implicit_rewards
from components.sft.data import IGNORE, sequence_logps, token_nll


def loss_and_grads(name, chosen, rejected, beta, eps=0.0):
    c = torch.tensor([chosen], requires_grad=True)
    r = torch.tensor([rejected], requires_grad=True)
    loss = LOSSES[name](c, r, beta, eps).sum()
    loss.backward()
    return loss.item(), c.grad.item(), r.grad.item()


@pytest.mark.parametrize("name, chosen, rejected, beta, eps, expected", [
    ("sigmoid", 1.0, 0.0, 0.1, 0.0, math.log(1 + math.exp(-0.1))),  # -logsigmoid(beta h), h = 1
    ("sigmoid", 0.5, -0.5, 0.1, 0.1, 0.9 * math.log(1 + math.exp(-0.1)) + 0.1 * math.log(1 + math.exp(0.1))),
    ("robust", 1.0, 0.0, 0.1, 0.1, (0.9 * math.log(1 + math.exp(-0.1)) - 0.1 * math.log(1 + math.exp(0.1))) / 0.8),
    ("hinge", 1.0, 0.0, 0.1, 0.0, 0.9),  # relu(1 - beta h)
    ("ipo", 1.0, 0.0, 0.1, 0.0, 16.0),  # (h - 1/(2 beta))^2 = (1 - 5)^2
])
def test_values(name, chosen, rejected, beta, eps, expected):
    assert loss_and_grads(name, chosen, rejected, beta, eps)[0] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_raise_the_chosen_and_lower_the_rejected(name):
    _, d_chosen, d_rejected = loss_and_grads(name, 0.3, 0.1, 0.1)
    assert d_chosen < 0 < d_rejected  # gradient descent raises chosen's log-ratio and lowers rejected's
    assert d_chosen == pytest.approx(-d_rejected)  # each loss depends on the difference only


def test_limits():
    # beta -> 0: the sigmoid loss tends to log 2 and its gradient to -beta/2, whatever the margin
    loss, d_chosen, _ = loss_and_grads("sigmoid", 3.0, -2.0, 1e-6)
    assert loss == pytest.approx(math.log(2), rel=1e-5) and d_chosen == pytest.approx(-0.5e-6, rel=1e-4)
    # a large margin: the sigmoid loss and its gradient vanish; hinge is exactly zero past 1 / beta
    loss, d_chosen, _ = loss_and_grads("sigmoid", 200.0, 0.0, 0.1)
    assert loss < 1e-8 and abs(d_chosen) < 1e-9
    assert loss_and_grads("hinge", 10.5, 0.0, 0.1)[:2] == (0.0, 0.0)
    # ipo's optimum is a margin of exactly 1 / (2 beta), not infinity
    assert loss_and_grads("ipo", 5.0, 0.0, 0.1)[:2] == (0.0, 0.0)
    # robust with no assumed noise is plain DPO
    c, r = torch.randn(8), torch.randn(8)
    assert torch.allclose(LOSSES["robust"](c, r, 0.1, 0.0), LOSSES["sigmoid"](c, r, 0.1, 0.0))


def test_implicit_rewards_statistics():
    stats = implicit_rewards(torch.tensor([1.0, 2.0]), torch.tensor([0.0, 3.0]), beta=0.1)
    assert stats == pytest.approx({"rewards/chosen": 0.15, "rewards/rejected": 0.15, "rewards/accuracies": 0.5,
                                   "rewards/margins": 0.0}, abs=1e-7)


def test_sequence_logps_sum_to_the_token_nll():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.tensor([[IGNORE, IGNORE, 4, 5, 1, IGNORE], [IGNORE, 2, 3, 3, 3, 3], [IGNORE] * 5 + [7]])
    logps, counts = sequence_logps(logits, labels)
    nll, n = token_nll(logits, labels)
    assert counts.tolist() == [3, 5, 1] and n.item() == 9
    assert -logps.sum().item() == pytest.approx(nll.item(), rel=1e-6)
    by_hand = torch.log_softmax(logits[2, 4], -1)[7]  # the last sequence's one labelled token, predicted at t=4
    assert logps[2].item() == pytest.approx(by_hand.item(), rel=1e-6)


def test_pairs_are_cut_at_max_length_and_counted(tokenizer):
    from components.dpo.train import encode_pairs
    from components.errors import DataError

    prompt = "Review of The Iron Summer:"
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    records = [{"prompt": prompt, "chosen": " Great.", "rejected": " Dull."},
               {"prompt": prompt, "chosen": " A wonderful, moving and clever film" * 3, "rejected": " Dull."}]
    pairs = encode_pairs(tokenizer, records, n_prompt + 8, "pref.jsonl")
    assert pairs.truncated == 1 and all(len(ids) <= n_prompt + 8 for ids, _ in pairs.chosen + pairs.rejected)
    assert pairs.chosen[0][0][-1] == tokenizer.eos_token_id and pairs.chosen[1][0][-1] != tokenizer.eos_token_id
    assert pairs.chosen[0][1][:n_prompt] == [IGNORE] * n_prompt  # the prompt is never a label
    with pytest.raises(DataError, match=r"^pref.jsonl:2: the prompt fills data.max_length"):
        encode_pairs(tokenizer, [records[0], {**records[0], "prompt": prompt * 4}], n_prompt + 8, "pref.jsonl")
