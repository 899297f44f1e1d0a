"""The SFT stage: fine-tune a causal LM on data prep's sft_train split, report held-out loss and perplexity."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from components.compute import engine as ds
from components.compute.loop import metrics_file, start, train
from components.data.prepare import load_data_tokenizer, read_split
from components.models.loading import causal_lm
from components.models.lora import merged, trainable
from components.sft.config import SFTConfig
from components.sft.data import collate, encode, token_nll
from components.stage import Hooks, Inputs


def run(config: SFTConfig, inputs: Inputs, out: Path, hooks: Hooks) -> dict[str, float]:
    """Train on data prep's sft_train split (`inputs.dirs["data"]`, sequences cut at data.max_length), then write a HF
    directory (model + tokenizer + metrics.json) to `out` atomically. Returns metrics including
    `sft/eval/loss_before`, `sft/eval/loss` and `sft/eval/perplexity`. With `hooks.checkpoint_dir`, checkpoints go
    there every config.checkpoint_every steps and one found there is resumed."""
    data_dir, max_length = inputs.dirs["data"], inputs.max_length
    ds.init_distributed()
    torch.manual_seed(config.seed)
    tokenizer = load_data_tokenizer(data_dir)
    train_set = [encode(tokenizer, r["prompt"], r["completion"], max_length) for r in read_split(data_dir, "sft_train")]
    eval_set = [encode(tokenizer, r["prompt"], r["completion"], max_length) for r in read_split(data_dir, "sft_eval")]
    model = trainable(causal_lm(config.model, tokenizer, field="sft.model"), config.lora, "CAUSAL_LM",
                      config.compute.gradient_checkpointing)
    plan, engine = start("sft", model, len(train_set), config)

    def step_fn(indices: list[int]):
        batch = collate([train_set[i] for i in indices], tokenizer.pad_token_id)
        nll, n_tokens = token_nll(engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                  batch["labels"])
        return nll / n_tokens.clamp(min=1), {}

    def evaluate() -> dict[str, float]:
        return evaluate_loss(engine, eval_set, tokenizer.pad_token_id, config.compute.micro_batch_size)

    engine.eval()
    with torch.no_grad():
        before = evaluate()
    metrics = {"sft/eval/loss_before": before["loss"],
               **train(engine, plan, step_fn, evaluate, hooks, config.checkpoint_every)}
    ds.save_hf(engine, tokenizer, out, {"metrics.json": metrics_file(metrics)}, select=merged)
    return metrics


def evaluate_loss(model, examples: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int) -> dict[str, float]:
    """Token-weighted mean NLL over completion tokens, and its perplexity."""
    total, count = 0.0, 0
    for first in range(0, len(examples), batch_size):
        batch = collate(examples[first:first + batch_size], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, n = token_nll(logits, batch["labels"])
        total, count = total + nll.item(), count + n.item()
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
