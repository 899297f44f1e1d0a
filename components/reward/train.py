"""The reward-model stage: fit r(x, y) on preference pairs, report accuracy on held-out pairs."""
from __future__ import annotations

from pathlib import Path

import torch

from components.compute import engine as ds
from components.compute.loop import metrics_file, start, train
from components.data.prepare import load_data_tokenizer, read_split
from components.errors import ConfigError
from components.feedback.labels import read_dataset
from components.models.config import ModelSpec
from components.models.loading import load_tokenizer, reward_model
from components.models.lora import merged, trainable
from components.reward.config import RewardConfig
from components.reward.losses import pairwise_accuracy, pairwise_loss
from components.reward.scoring import RewardModel, pad_right, scored_ids
from components.stage import Hooks, Inputs

Pair = tuple[list[int], list[int]]  # token ids of the chosen and the rejected scored sequence


def encode_pair(tokenizer, record: dict[str, str], max_length: int) -> Pair:
    """Both responses as the reward model scores them (`scored_ids`: prompt + response + EOS), each keeping its
    first `max_length - 1` tokens before the final EOS."""
    def one(response: str) -> list[int]:
        ids = scored_ids(tokenizer, record["prompt"], response)
        return ids if len(ids) <= max_length else ids[:max_length - 1] + [tokenizer.eos_token_id]

    return one(record["chosen"]), one(record["rejected"])


def score_batch(model: RewardModel, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """Scalar rewards (N,) of token sequences, read at each one's last real token."""
    return model(*pad_right(sequences, pad_id))


def run(config: RewardConfig, inputs: Inputs, out: Path, hooks: Hooks) -> dict[str, float]:
    """Train a reward model from `config.model`, or else from the SFT output (`inputs.dirs["sft"]`), on data prep's
    preference_train pairs plus the stored human-feedback datasets `inputs.feedback`, and write a HF directory
    (AutoModelForSequenceClassification, num_labels=1) with metrics.json to `out` atomically. A `config.model` with
    its own tokenizer reads the pairs in its tokens. With `hooks.checkpoint_dir`, checkpoints go there every
    config.checkpoint_every steps and one found there is resumed."""
    base_model, data_dir, max_length = inputs.dirs.get("sft"), inputs.dirs["data"], inputs.max_length
    spec = config.model or (ModelSpec(name_or_path=str(base_model)) if base_model else None)
    if spec is None:
        raise ConfigError("reward.model is not set and no SFT model was given as the base")
    ds.init_distributed()
    torch.manual_seed(config.seed)
    tokenizer = (load_data_tokenizer(data_dir) if spec.arch is not None  # a backbone reads pairs in its own tokens
                 else load_tokenizer(spec.name_or_path, field="reward.model", trust_remote_code=spec.trust_remote_code))
    records = read_split(data_dir, "preference_train")
    records += [r for d in inputs.feedback for r in read_dataset(d)]
    train_set = [encode_pair(tokenizer, r, max_length) for r in records]
    eval_set = [encode_pair(tokenizer, r, max_length) for r in read_split(data_dir, "preference_eval")]
    hf_model = trainable(reward_model(spec, tokenizer, field="reward.model"), config.lora, "SEQ_CLS",
                         config.compute.gradient_checkpointing)
    plan, engine = start("reward", RewardModel(hf_model), len(train_set), config)

    def step_fn(indices: list[int]):
        pairs = [train_set[i] for i in indices]
        rewards = score_batch(engine, [p[0] for p in pairs] + [p[1] for p in pairs], tokenizer.pad_token_id)
        r_c, r_r = rewards.chunk(2)  # (B,), (B,)
        return pairwise_loss(r_c, r_r, config.margin), {"accuracy": pairwise_accuracy(r_c, r_r).item(),
                                                         "margin_mean": (r_c - r_r).mean().item()}

    def evaluate() -> dict[str, float]:
        return evaluate_pairs(engine, eval_set, tokenizer.pad_token_id, config.compute.micro_batch_size,
                              config.margin)

    metrics = train(engine, plan, step_fn, evaluate, hooks, config.checkpoint_every)
    ds.save_hf(engine, tokenizer, out, {"metrics.json": metrics_file(metrics)}, select=lambda m: merged(m.model))
    return metrics


def evaluate_pairs(model: RewardModel, pairs: list[Pair], pad_id: int, batch_size: int,
                   margin: float = 0.0) -> dict[str, float]:
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
