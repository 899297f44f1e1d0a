"""The reward-model stage: fit r(x, y) on preference pairs, report accuracy on held-out pairs."""
from __future__ import annotations

from pathlib import Path

import torch

from components.compute import engine as ds
from components.compute.loop import LogFn, metrics_file, start, train
from components.data.prepare import load_data_tokenizer, read_split
from components.feedback.labels import read_dataset
from components.models.config import ModelSpec
from components.models.loading import reward_model
from components.reward.config import RewardConfig
from components.reward.losses import pairwise_accuracy, pairwise_loss
from components.sft.data import collate

Pair = tuple[list[int], list[int]]  # token ids of prompt+chosen+EOS, prompt+rejected+EOS


def encode_pair(tokenizer, record: dict[str, str], max_length: int) -> Pair:
    """Tokenise both responses after the prompt, each cut to `max_length - 1` tokens from the start, then EOS."""
    p = tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]

    def one(response: str) -> list[int]:
        return (p + tokenizer(response, add_special_tokens=False)["input_ids"])[:max_length - 1] + [tokenizer.eos_token_id]

    return one(record["chosen"]), one(record["rejected"])


def score_batch(model, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """Scalar rewards (N,) for right-padded sequences; the head reads the last non-pad token."""
    batch = collate([(s, s) for s in sequences], pad_id)  # labels unused
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1).float()


def run(config: RewardConfig, data_dir: str | Path, out_dir: str | Path, max_length: int,
        base_model: str | None = None, on_log: LogFn | None = None,
        feedback_dirs: list[str | Path] = ()) -> dict[str, float]:
    """Train a reward model from `config.model`, or else from `base_model` (the SFT output dir), and write a
    HF directory (AutoModelForSequenceClassification, num_labels=1) with metrics.json to `out_dir` atomically.
    `feedback_dirs` are stored human-feedback datasets whose pairs are added to preference_train."""
    spec = config.model or (ModelSpec(name_or_path=str(base_model)) if base_model else None)
    if spec is None:
        raise ValueError("reward.model is not set and no SFT model was given as the base")
    ds.init_distributed()
    torch.manual_seed(config.seed)
    tokenizer = load_data_tokenizer(data_dir)
    records = read_split(data_dir, "preference_train")
    records += [r for d in feedback_dirs for r in read_dataset(d)]
    train_set = [encode_pair(tokenizer, r, max_length) for r in records]
    eval_set = [encode_pair(tokenizer, r, max_length) for r in read_split(data_dir, "preference_eval")]
    model = reward_model(spec, tokenizer, field="reward.model")
    plan, engine = start("reward", model, len(train_set), config)

    def step_fn(indices: list[int]):
        pairs = [train_set[i] for i in indices]
        rewards = score_batch(engine, [p[0] for p in pairs] + [p[1] for p in pairs], tokenizer.pad_token_id)
        r_c, r_r = rewards.chunk(2)  # (B,), (B,)
        return pairwise_loss(r_c, r_r, config.margin), {"accuracy": pairwise_accuracy(r_c, r_r).item(),
                                                         "margin_mean": (r_c - r_r).mean().item()}

    def evaluate() -> dict[str, float]:
        return evaluate_pairs(engine, eval_set, tokenizer.pad_token_id, config.compute.micro_batch_size,
                              config.margin)

    metrics = train(engine, plan, step_fn, evaluate, on_log)
    ds.save_hf(engine, tokenizer, out_dir, {"metrics.json": metrics_file(metrics)})
    return metrics


def evaluate_pairs(model, pairs: list[Pair], pad_id: int, batch_size: int, margin: float = 0.0) -> dict[str, float]:
    """Held-out pairwise loss and accuracy (agreement with the pair's label)."""
    chosen, rejected = [], []
    for first in range(0, len(pairs), batch_size):
        chunk = pairs[first:first + batch_size]
        rewards = score_batch(model, [p[0] for p in chunk] + [p[1] for p in chunk], pad_id)
        r_c, r_r = rewards.chunk(2)
        chosen.append(r_c)
        rejected.append(r_r)
    r_c, r_r = torch.cat(chosen), torch.cat(rejected)
    return {"loss": pairwise_loss(r_c, r_r, margin).item(), "accuracy": pairwise_accuracy(r_c, r_r).item()}
