"""The DPO stage: the SFT model trained on preference pairs against itself frozen, with no reward model.

The reference log-probabilities depend only on the SFT model and the pairs, so they are computed once, before
the first update, by the policy itself (its initial weights are the reference's; with LoRA its adapters start at
zero): no second copy of the model is ever held. They are stored beside the checkpoints, so epochs and resumes
never recompute them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from components.compute import engine as ds
from components.compute.engine import is_rank0
from components.compute.loop import metrics_file, start, train
from components.data.prepare import load_data_tokenizer, read_split
from components.dpo.config import DPOConfig
from components.dpo.losses import LENGTH_AVERAGED, LOSSES, implicit_rewards
from components.errors import ConfigError, DataError
from components.feedback.labels import read_dataset
from components.models.config import ModelSpec
from components.models.loading import causal_lm, disable_dropout
from components.models.lora import merged, trainable
from components.sft.data import collate, encode, sequence_logps
from components.stage import Hooks, Inputs

Example = tuple[list[int], list[int]]  # (input_ids, labels): prompt + response + EOS, prompt labels ignored
REFERENCE_FILE = "reference_logps.pt"


@dataclass
class Pairs:
    """Encoded preference pairs and the reference model's log-probabilities of their responses."""

    chosen: list[Example]
    rejected: list[Example]
    reference: torch.Tensor | None = None  # (N, 2): summed log p of chosen, rejected under the SFT model
    truncated: int = 0  # pairs with a response cut at max_length (it lost its EOS)


def encode_pairs(tokenizer, records: list[dict], max_length: int, source: str) -> Pairs:
    """Each pair as SFT encodes a completion: prompt + response + EOS, cut at `max_length` (as TRL's DPOTrainer
    truncates; such pairs are counted). A pair whose prompt leaves no room for a response token is an error
    naming its line."""
    pairs = Pairs([], [])
    for line, r in enumerate(records, 1):
        chosen, rejected = encode(tokenizer, r["prompt"], r["chosen"], max_length), \
            encode(tokenizer, r["prompt"], r["rejected"], max_length)
        if chosen[1][-1] < 0 or rejected[1][-1] < 0:
            raise DataError(source, f"the prompt fills data.max_length={max_length}: no response token is left", line)
        pairs.chosen.append(chosen)
        pairs.rejected.append(rejected)
        pairs.truncated += chosen[0][-1] != tokenizer.eos_token_id or rejected[0][-1] != tokenizer.eos_token_id
    return pairs


def run(config: DPOConfig, inputs: Inputs, out: Path, hooks: Hooks) -> dict[str, float]:
    """Train `config.model` (else the SFT output, `inputs.dirs["sft"]`) on preference_train plus the feedback
    datasets `inputs.feedback`, and write the policy as a HF directory with metrics.json to `out` atomically. With
    `hooks.checkpoint_dir`, checkpoints go there every config.checkpoint_every steps and a run finding one there
    resumes it."""
    base_model, data_dir, max_length = inputs.dirs.get("sft"), inputs.dirs["data"], inputs.max_length
    checkpoint_dir = hooks.checkpoint_dir
    spec = config.model or (ModelSpec(name_or_path=str(base_model)) if base_model else None)
    if spec is None:
        raise ConfigError("dpo.model is not set and no SFT model was given")
    ds.init_distributed()
    torch.manual_seed(config.seed)
    tokenizer = load_data_tokenizer(data_dir)
    records = read_split(data_dir, "preference_train") + [r for d in inputs.feedback for r in read_dataset(d)]
    train_set = encode_pairs(tokenizer, records, max_length, "preference_train")
    eval_set = encode_pairs(tokenizer, read_split(data_dir, "preference_eval"), max_length, "preference_eval")
    model = trainable(disable_dropout(causal_lm(spec, tokenizer, field="dpo.model")), config.lora, "CAUSAL_LM",
                      config.compute.gradient_checkpointing)
    plan, engine = start("dpo", model, len(train_set.chosen), config)
    pad, batch_size = tokenizer.pad_token_id, config.compute.micro_batch_size
    with torch.no_grad():
        train_set.reference, eval_set.reference = _reference(engine, [train_set, eval_set], pad, batch_size,
                                                             checkpoint_dir)

    def step_fn(indices: list[int]):
        return _loss(config, *_logps(engine, train_set, indices, pad), train_set.reference[indices])

    def evaluate() -> dict[str, float]:
        return evaluate_pairs(engine, eval_set, config, pad, batch_size)

    metrics = {"dpo/data/pairs": float(len(train_set.chosen)), "dpo/data/truncated_pairs": float(train_set.truncated),
               **train(engine, plan, step_fn, evaluate, hooks, config.checkpoint_every)}
    ds.save_hf(engine, tokenizer, out, {"metrics.json": metrics_file(metrics)}, select=merged)
    return metrics


def _logps(model, pairs: Pairs, indices: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log p and token counts (B, 2) of the chosen and rejected responses of pairs `indices`,
    in one forward of 2B sequences."""
    batch = collate([pairs.chosen[i] for i in indices] + [pairs.rejected[i] for i in indices], pad_id)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (2B, T, V)
    logps, counts = sequence_logps(logits, batch["labels"])  # (2B,), (2B,)
    return torch.stack(logps.chunk(2), 1), torch.stack(counts.chunk(2), 1)  # (B, 2)


def _loss(config: DPOConfig, logps: torch.Tensor, counts: torch.Tensor,
          reference: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """The configured loss of a batch from policy and reference log-probs (B, 2), and TRL's statistics."""
    scale = counts.clamp(min=1) if config.loss_type in LENGTH_AVERAGED else 1
    ratios = (logps - reference) / scale  # (B, 2): log pi/ref of chosen, rejected
    loss = LOSSES[config.loss_type](ratios[:, 0], ratios[:, 1], config.beta, config.label_smoothing).mean()
    stats = {**implicit_rewards(ratios[:, 0], ratios[:, 1], config.beta),
             "logps/chosen": logps[:, 0].mean().item(), "logps/rejected": logps[:, 1].mean().item()}
    if config.rpo_alpha:
        nll = -logps[:, 0].sum() / counts[:, 0].sum().clamp(min=1)  # token-mean NLL of the chosen responses
        loss = loss + config.rpo_alpha * nll
        stats["nll_loss"] = nll.item()
    return loss, stats


def _reference(model, sets: list[Pairs], pad_id: int, batch_size: int,
               checkpoint_dir: str | Path | None) -> list[torch.Tensor]:
    """The reference log-probs (N, 2) of each set: read from `checkpoint_dir` when stored there, else computed by
    `model` before its first update (and stored there for a resume)."""
    path = Path(checkpoint_dir, REFERENCE_FILE) if checkpoint_dir else None
    if path is not None and path.is_file():
        return torch.load(path, weights_only=True)
    was_training = model.training
    model.eval()
    out = [torch.cat([_logps(model, s, indices, pad_id)[0] for indices in _batches(len(s.chosen), batch_size)])
           for s in sets]
    model.train(was_training)
    if path is not None and is_rank0():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
    return out


def evaluate_pairs(model, pairs: Pairs, config: DPOConfig, pad_id: int, batch_size: int) -> dict[str, float]:
    """Held-out DPO loss and implicit-reward statistics (accuracy: how often beta * log-ratio ranks the chosen
    response above the rejected one), weighted by batch size."""
    sums: dict[str, float] = {}
    for indices in _batches(len(pairs.chosen), batch_size):
        loss, stats = _loss(config, *_logps(model, pairs, indices, pad_id), pairs.reference[indices])
        for k, v in {"loss": loss.item(), **stats}.items():
            sums[k] = sums.get(k, 0.0) + v * len(indices)
    return {k: v / len(pairs.chosen) for k, v in sums.items()}


def _batches(n: int, size: int) -> list[list[int]]:
    """Indices 0..n-1 in consecutive batches of `size` (the last may be shorter)."""
    return [list(range(first, min(first + size, n))) for first in range(0, n, size)]
