"""Tokenise prompt/completion pairs for SFT: the loss covers completion tokens (and EOS) only."""
from __future__ import annotations

import torch

IGNORE = -100  # the label index torch's cross_entropy skips


def encode(tokenizer, prompt: str, completion: str, max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of prompt + completion + EOS, cut at `max_length`; prompt labels are IGNORE. A
    completion whose tokens already end with EOS (a chat template's closed turn) gets no second one."""
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if not c or c[-1] != tokenizer.eos_token_id:
        c = c + [tokenizer.eos_token_id]
    return (p + c)[:max_length], ([IGNORE] * len(p) + c)[:max_length]


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch: input_ids (B, T), attention_mask (B, T), labels (B, T) with IGNORE on padding."""
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    for i, (x, y) in enumerate(examples):
        ids[i, :len(x)], labels[i, :len(y)], mask[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token NLL over labelled positions and their count. logits (B, T, V), labels (B, T)."""
    shift_logits = logits[:, :-1].reshape(-1, logits.size(-1))  # (B*(T-1), V)
    shift_labels = labels[:, 1:].reshape(-1)  # (B*(T-1),)
    nll = torch.nn.functional.cross_entropy(shift_logits.float(), shift_labels, ignore_index=IGNORE, reduction="sum")
    return nll, (shift_labels != IGNORE).sum()


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence: the summed log-probability of its labelled tokens (B,) and their count (B,).
    logits (B, T, V), labels (B, T)."""
    shift_labels = labels[:, 1:]  # (B, T-1)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), shift_labels,
                                            ignore_index=IGNORE, reduction="none")  # (B, T-1)
    return -nll.sum(1), (shift_labels != IGNORE).sum(1)
