import torch

from components.sft.data import IGNORE, collate, encode, token_nll


def test_prompt_tokens_are_masked_and_completion_ends_in_eos(tokenizer):
    prompt_ids = tokenizer("Review of The Iron Summer:", add_special_tokens=False)["input_ids"]
    ids, labels = encode(tokenizer, "Review of The Iron Summer:", " The plot was great.", max_length=64)
    assert labels[:len(prompt_ids)] == [IGNORE] * len(prompt_ids)
    assert labels[len(prompt_ids):] == ids[len(prompt_ids):]
    assert ids[-1] == tokenizer.eos_token_id and labels[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[len(prompt_ids):-1]) == " The plot was great."


def test_truncation_keeps_ids_and_labels_aligned(tokenizer):
    ids, labels = encode(tokenizer, "Review of The Iron Summer:", " The plot was great. I loved it.", max_length=8)
    assert len(ids) == len(labels) == 8


def test_collate_pads_labels_with_ignore(tokenizer):
    a = encode(tokenizer, "Review of X:", " Great.", 64)
    b = encode(tokenizer, "Review of X:", " The plot was great and the music was fun.", 64)
    batch = collate([a, b], pad_id=tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    short = len(a[0])
    assert (batch["labels"][0, short:] == IGNORE).all()
    assert (batch["attention_mask"][0, short:] == 0).all() and batch["attention_mask"][1].all()


def test_loss_ignores_prompt_positions():
    torch.manual_seed(0)
    logits = torch.randn(1, 6, 10)
    labels = torch.tensor([[IGNORE, IGNORE, IGNORE, 4, 5, 1]])
    nll, n = token_nll(logits, labels)
    assert n.item() == 3
    changed = logits.clone()
    changed[0, :2, 7] += 100.0  # positions 0-1 predict prompt tokens 1-2: masked
    assert torch.allclose(token_nll(changed, labels)[0], nll)
    changed[0, 2, 7] += 100.0  # position 2 predicts the first completion token
    assert not torch.allclose(token_nll(changed, labels)[0], nll)
    expected = -torch.log_softmax(logits[0, 2:5], -1)[torch.arange(3), torch.tensor([4, 5, 1])].sum()
    assert torch.allclose(nll, expected)
