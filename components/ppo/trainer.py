"""PPO as named phases: rollout (sampled and scored) -> compute_advantages -> update, one `step()` per iteration.

Every rank samples and scores its share of the prompts; the scored batch is then all-gathered, so advantages,
whitening and minibatches are computed on the whole batch identically everywhere, and each minibatch loss is
normalised by the whole minibatch's token count: 1 rank and N ranks take the same optimizer steps.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from components.compute import engine as ds
from components.compute.engine import world
from components.compute.seeds import seed_for
from components.models.precision import autocast
from components.ppo import kl as klc
from components.ppo.advantages import ESTIMATORS, Returns, group_ids, group_order, token_weights
from components.ppo.config import PPOConfig
from components.ppo.losses import KL_ESTIMATORS, logprobs_and_entropy, masked_mean, masked_sum, policy_loss, value_loss
from components.ppo.models import adapters_disabled
from components.ppo.shaping import RunningMoments, shape_scores, token_rewards
from components.rl.driver import EvalSet
from components.rl.generation import Actor, Rollout, left_pad, response_values, rollout
from components.rl.rewards import Reward, RewardTerm
from components.rl.scoring import sample_rows, score
from components.sft.data import collate, token_nll

log = logging.getLogger(__name__)


@dataclass
class Models:
    """What the trainer drives: DeepSpeed engines for the actor (and critic), frozen reference and scorer."""

    actor: object  # DeepSpeed engine over an Actor
    critic: object | None  # DeepSpeed engine over a token-value model, or None (value head)
    reference: object | None  # frozen LM; None with LoRA (the actor with adapters disabled) or without a KL penalty
    scorer: object | None  # frozen reward model; None when no reward term is the reward model


@dataclass
class State:
    """Everything besides engine states that a resume needs (plain data)."""

    iteration: int = 0
    kl: dict = field(default_factory=dict)
    moments: dict | None = None


@dataclass
class Advantages:
    """What `compute_advantages` makes of a scored batch: all (B, R) but `kl` (the mean k1 KL per sequence)."""

    mask: torch.Tensor  # response tokens of samples whose score is finite
    advantages: torch.Tensor
    returns: torch.Tensor
    kl: float
    stats: dict[str, float]


class PPOTrainer:
    """PPO's phases over DeepSpeed engines. `rewards` are the reward's terms (the reward model's among them is
    scored by `models.scorer`)."""

    def __init__(self, config: PPOConfig, models: Models, tokenizer, prompts: list[list[int]],
                 prompt_texts: list[str], rewards: list[RewardTerm],
                 ptx_examples: list[tuple[list[int], list[int]]] | None = None, prompt_messages: list | None = None):
        self.config, self.models, self.tokenizer = config, models, tokenizer
        self.prompts, self.prompt_texts, self.rewards = prompts, prompt_texts, rewards
        self.reward = Reward(rewards, models.scorer, config.nonfinite_rewards)
        self.prompt_messages = prompt_messages or [None] * len(prompts)
        self.ptx_examples = ptx_examples or []
        self.prompt_width = max(len(p) for p in prompts)
        kl = config.kl
        self.kl_ctl = (klc.AdaptiveKLController(kl.coef, kl.target, kl.horizon) if kl.adaptive
                       else klc.FixedKLController(kl.coef))
        self.moments = RunningMoments() if config.reward_normalize else None
        self.iteration = 0
        self.timings: dict[str, float] = {}

    @property
    def actor(self) -> Actor:
        return self.models.actor.module

    # -- phase 0: which prompts -------------------------------------------------------------------------------
    def prompt_indices(self, iteration: int) -> list[int]:
        """This rank's prompts for `iteration`: a seeded shuffle per epoch over the prompt set, batch_size per
        iteration over all ranks (rank r takes every world-th). Stateless, so a resume needs only the iteration."""
        n, b = len(self.prompts), self.config.batch_size
        out, orders = [], {}
        for k in range(iteration * b, (iteration + 1) * b):
            epoch, pos = divmod(k, n)
            if epoch not in orders:
                orders[epoch] = np.random.default_rng(seed_for(self.config.seed, epoch, 7)).permutation(n)
            out.append(int(orders[epoch][pos]))
        rank, world_size = world()
        return out[rank::world_size]

    # -- phase 1: rollout, sampled and scored ----------------------------------------------------------------
    def rollout_and_score(self, prompts: list[list[int]], texts: list[str], salt: int = 0,
                          messages: list | None = None) -> tuple[Rollout, list[str]]:
        """This rank's prompts sampled (seeded by seed, iteration, rank, salt) and scored: the finished batch (old
        log-probs and values, the reference's log-probs, the reward) and the response texts."""
        ids, mask = left_pad(prompts, self.tokenizer.pad_token_id, max(self.prompt_width, max(map(len, prompts))))
        torch.manual_seed(seed_for(self.config.seed, self.iteration, world()[0], salt))
        t0 = time.perf_counter()
        with ds.for_generation(self.models.actor) as actor:
            batch = rollout(actor, actor.lm, ids, mask, self.config.rollout, self.tokenizer,
                            old_logprobs=not self.bf16)
        t1 = time.perf_counter()
        if self.bf16:
            batch = self._training_forward_logprobs(batch)
        with self._reference() as ref:
            batch, responses = score(batch, texts, self.reward, self.tokenizer, reference=ref,
                                     critic=self.models.critic, temperature=self.config.rollout.temperature,
                                     messages=messages, precision=self.config.compute.precision)
        self.timings.update(generate=t1 - t0, score=time.perf_counter() - t1)
        return batch, responses

    @property
    def bf16(self) -> bool:
        """compute.precision bf16 or bf16-true: old log-probs from a training-shaped forward, untrimmed micro
        batches."""
        return self.config.compute.precision != "fp32"

    @torch.no_grad()
    def _training_forward_logprobs(self, batch: Rollout) -> Rollout:
        """`batch` with the old log-probs (and value-head values) from a training-shaped forward instead of
        generate's steps, in the update's micro-batch shape (so at step 0 the update's ratio is exactly 1). In fp32
        both agree to ~1e-6; in bf16 the KV-cache shapes pick other kernels and round differently (measured on
        SmolLM2: |ratio - 1| 0.016 on average at step 0, up to 0.09). Costs one no-grad forward of the batch, as
        TRL's rollout always does."""
        c, r, micro = self.config, batch.n_response, self._micro_size()
        tokens, mask = batch.input_ids[:, -r:], batch.response_mask
        logprobs, values = torch.zeros_like(batch.logprobs), batch.values.clone()  # (B, R) each
        for start in range(0, len(tokens), micro):
            rows = slice(start, start + micro)
            logits, part = self.models.actor(batch.input_ids[rows], batch.attention_mask[rows], r,
                                             c.rollout.temperature)
            logprobs[rows] = logprobs_and_entropy(logits, tokens[rows])[0] * mask[rows]
            if part is not None:
                values[rows] = part.float()
        return replace(batch, logprobs=logprobs, values=values)

    @contextlib.contextmanager
    def _reference(self):
        """The frozen reference LM: its own copy, or with LoRA the actor with adapters disabled; None without a KL
        penalty (kl.coef 0), where no reference is loaded and the KL is neither computed nor reported."""
        if not self.config.uses_reference:
            yield None
        elif self.models.reference is not None:
            yield self.models.reference
        else:
            with adapters_disabled(self.actor) as base:
                yield base

    # -- phase 2: advantages ----------------------------------------------------------------------------------
    def compute_advantages(self, batch: Rollout) -> Advantages:
        """Advantages and returns of the (whole) scored batch by the configured estimator, and the rollout's
        statistics. Samples with non-finite scores get mask 0. Reads the KL coefficient; `step` updates it."""
        c = self.config
        mask = batch.response_mask * batch.keep.unsqueeze(1)  # (B, R)
        shaped = shape_scores(batch.scores, batch.keep, batch.has_eos, c.missing_eos_penalty, self.moments,
                              c.reward_clip)
        rewards, kl = token_rewards(shaped, batch.logprobs, batch.ref_logprobs, mask, self.kl_ctl.value,
                                    c.kl.estimator, c.kl.in_reward)
        kept = batch.keep.float()
        seq_kl = ((batch.logprobs - batch.ref_logprobs) * mask).sum(1)  # (B,) k1 per sequence
        groups = group_ids(len(kept), world()[1], c.num_generations)
        advantages, returns, group_stats = ESTIMATORS[c.advantage](
            Returns(rewards, batch.values, mask, batch.scores, batch.keep, groups), c)
        # TRL's PPOTrainer names (objective/, policy/, loss/, val/), so its users read these curves as they know them
        score, kl_mean = masked_mean(batch.scores, kept).item(), masked_mean(seq_kl, kept).item()
        stats = {"objective/scores": score, "objective/scores_std": _std(batch.scores[batch.keep]),
                 "objective/shaped_scores": masked_mean(shaped, kept).item(),
                 "objective/kl_coef": self.kl_ctl.value,
                 "objective/rlhf_reward": score - self.kl_ctl.value * kl_mean,
                 "objective/nonfinite_skipped": float((~batch.keep).sum()),
                 "val/response_length": batch.response_mask.sum(1).mean().item(),
                 "val/eos_frac": batch.has_eos.float().mean().item(), **group_stats}
        if c.uses_reference:  # without a reference there is no KL to report
            stats.update({"objective/kl": kl_mean, "objective/non_score_reward": -self.kl_ctl.value * kl_mean})
        if c.uses_critic:
            stats["val/value_mean"] = masked_mean(batch.values, mask).item()
        for k, term in enumerate(self.rewards):  # TRL GRPOTrainer's names
            stats[f"rewards/{term.name}/mean"] = masked_mean(batch.term_scores[:, k], kept).item()
            stats[f"rewards/{term.name}/std"] = _std(batch.term_scores[batch.keep, k])
        scorer = self.models.scorer
        if scorer is not None and not scorer.same:  # re-tokenised for a scorer with its own tokenizer
            stats["objective/scorer_truncated"] = float(scorer.truncated)
        return Advantages(mask, advantages, returns, kl_mean, stats)

    # -- phase 3: update ----------------------------------------------------------------------------------------
    def update(self, batch: Rollout, mask: torch.Tensor, advantages: torch.Tensor, returns: torch.Tensor) -> dict:
        """ppo_epochs passes of num_minibatches optimizer steps over the (whole, gathered) batch; each minibatch
        holds whole groups (all samples of its prompts)."""
        c, (rank, world_size) = self.config, world()
        per_rank, micro = c.minibatch_size // world_size, self._micro_size()
        sums: dict[str, float] = {}
        groups = group_ids(len(mask), world_size, c.num_generations)
        for epoch in range(c.ppo_epochs):
            g = torch.Generator().manual_seed(seed_for(c.seed, self.iteration, epoch, 11))
            order = group_order(groups, g)  # whole groups per minibatch
            for k in range(c.num_minibatches):
                minibatch = order[k * c.minibatch_size:(k + 1) * c.minibatch_size]
                n_tokens = mask[minibatch].sum().clamp(min=1)
                weights = torch.zeros_like(mask)
                weights[minibatch] = token_weights(mask[minibatch], c.loss_aggregation, c.rollout.max_new_tokens)
                mine = minibatch[rank::world_size]
                for j in range(0, per_rank, micro):
                    idx = mine[j:j + micro]
                    stats = self._micro_step(batch.select(idx, trim=not self.bf16), mask[idx], advantages[idx], returns[idx],
                                             world_size * (per_rank // micro) / n_tokens, weights[idx])
                    for name, v in stats.items():
                        sums[name] = sums.get(name, 0.0) + v
        n_tokens = mask.sum().clamp(min=1).item() * c.ppo_epochs
        return _all_sum({name: v / n_tokens for name, v in sums.items()})

    def _micro_size(self) -> int:
        """Rows per forward of the update on each rank."""
        return min(self.config.compute.micro_batch_size, self.config.minibatch_size // world()[1])

    def _micro_step(self, mb: Rollout, mask, advantages, returns, scale: torch.Tensor,
                    weights: torch.Tensor) -> dict[str, float]:
        """One micro batch: policy (+ value, KL, entropy, ptx) loss, backward, step. Token sums are scaled by
        `scale` = ranks x accumulation / tokens in the minibatch, as DeepSpeed averages over both; `weights` (the
        loss aggregation's, see advantages.token_weights) weigh each token's policy and KL loss."""
        c, r = self.config, mb.n_response
        mask, advantages, returns, weights = mask[:, :r], advantages[:, :r], returns[:, :r], weights[:, :r]
        logits, values = self.models.actor(mb.input_ids, mb.attention_mask, r, c.rollout.temperature)
        logprobs, entropy = logprobs_and_entropy(logits, mb.input_ids[:, -r:])
        loss, pg = policy_loss(logprobs, mb.logprobs, advantages, mask, c.clip_eps, c.clip_eps_high, weights)
        stats = {"loss/policy_avg": loss.detach(), "policy/entropy_avg": masked_sum(entropy.detach(), mask),
                 "policy/clipfrac_avg": pg["clipfrac"], "policy/approxkl_avg": pg["approx_kl"],
                 "clip_ratio/low_mean": pg["clip_low"], "clip_ratio/high_mean": pg["clip_high"]}
        if c.entropy_coef:
            loss = loss - c.entropy_coef * masked_sum(entropy, mask)
        if not c.kl.in_reward:
            loss = loss + self.kl_ctl.value * masked_sum(KL_ESTIMATORS[c.kl.estimator](logprobs - mb.ref_logprobs),
                                                         weights)
        if c.uses_critic:
            if values is None:  # separate critic: its own engine and step
                values = response_values(self.models.critic, mb.input_ids, mb.attention_mask, r)
            vf_loss, vf_stats = value_loss(values, mb.values, returns, mask, c.vf_clip)
            stats.update({"loss/value_avg": vf_loss.detach(), "val/clipfrac_avg": vf_stats["vf_clipfrac"]})
            if self.models.critic is None:
                loss = loss + c.vf_coef * vf_loss
        loss = loss * scale
        if c.ptx_coef and self.ptx_examples:
            ptx = self._ptx_loss(len(mask))
            loss = loss + c.ptx_coef * ptx
            stats["loss/ptx_avg"] = ptx.detach() * mask.sum()  # token-weighted like the other stats
        self.models.actor.backward(loss)
        self.models.actor.step()
        if self.models.critic is not None:  # only with advantage: gae
            self.models.critic.backward(vf_loss * scale)
            self.models.critic.step()
        return {k: float(v) for k, v in stats.items()}

    def _ptx_loss(self, n: int) -> torch.Tensor:
        """Mean next-token NLL of n SFT examples drawn with a seeded generator (InstructGPT's pretraining mix)."""
        g = np.random.default_rng(seed_for(self.config.seed, self.iteration, world()[0], 13))
        batch = collate([self.ptx_examples[i] for i in g.integers(len(self.ptx_examples), size=n)],
                        self.tokenizer.pad_token_id)
        with autocast(self.config.compute.precision):  # the LM's own forward, outside the engine's autocast
            logits = self.actor.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        nll, count = token_nll(logits, batch["labels"])
        return nll / count.clamp(min=1)

    # -- one iteration ------------------------------------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """rollout and score -> (all-gather) -> compute_advantages -> KL controller -> update. Returns this
        iteration's metrics."""
        t0 = time.perf_counter()
        indices = [i for i in self.prompt_indices(self.iteration) for _ in range(self.config.num_generations)]
        batch, _ = self.rollout_and_score([self.prompts[i] for i in indices], [self.prompt_texts[i] for i in indices],
                                          messages=[self.prompt_messages[i] for i in indices])
        batch = _all_gather(batch)
        adv = self.compute_advantages(batch)
        self.kl_ctl.update(adv.kl, len(batch.keep))  # Ziegler et al.: beta follows the KL of this batch
        t1 = time.perf_counter()
        self.models.actor.train()
        stats = {**adv.stats, **self.update(batch, adv.mask, adv.advantages, adv.returns)}
        self.timings["update"] = time.perf_counter() - t1
        seconds = time.perf_counter() - t0
        stats.update({f"time/{k}": v for k, v in self.timings.items()}, **{
            "time/iteration": seconds, "perf/samples_per_s": len(adv.mask) / seconds,
            "perf/gen_tokens_per_s": batch.response_mask.sum().item() / max(self.timings["generate"], 1e-9)})
        self.iteration += 1
        return stats

    # -- held-out evaluation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, eval_set: EvalSet) -> tuple[dict[str, float], list[dict]]:
        """Sample ppo.eval_samples responses per held-out prompt (sharded over ranks); return mean score, gold score
        (when the set has a gold scorer), KL to the reference and length, plus per-sample rows (all ranks')."""
        prompts, texts, messages, gold_fn = eval_set.prompts, eval_set.texts, eval_set.messages, eval_set.gold_fn
        rank, world_size = world()
        mine = [i for i in range(len(prompts)) if i % world_size == rank] * self.config.eval_samples
        rows = []
        self.models.actor.eval()
        for start in range(0, len(mine), self.config.batch_size):
            chunk = mine[start:start + self.config.batch_size]
            batch, responses = self.rollout_and_score([prompts[i] for i in chunk], [texts[i] for i in chunk],
                                                      salt=1000 + start,
                                                      messages=[messages[i] for i in chunk] if messages else None)
            rows += sample_rows(batch, responses, batch.scores, chunk, texts, gold_fn)
        rows = _gather_rows(rows)
        if not self.config.uses_reference:
            rows = [{**r, "kl": None} for r in rows]
        named = (("score_mean", "score"), ("kl_to_ref", "kl"), ("length_mean", "length"))
        metrics = {name: float(np.mean([r[k] for r in rows]))  # named as the evaluation stage names them
                   for name, k in named if self.config.uses_reference or k != "kl"}
        if gold_fn is not None:
            metrics["gold_mean"] = float(np.mean([r["gold"] for r in rows]))
        return metrics, rows

    # -- state ----------------------------------------------------------------------------------------------------
    def state(self) -> State:
        return State(self.iteration, self.kl_ctl.state_dict(), self.moments.state_dict() if self.moments else None)

    def load_state(self, state: dict) -> None:
        self.iteration = state["iteration"]
        self.kl_ctl = klc.from_state(state["kl"])
        if state.get("moments") is not None:
            self.moments = RunningMoments(**state["moments"])

    def save_checkpoint(self, ckpt_dir, extra: dict | None = None) -> bool:
        """Every ppo.checkpoint_every iterations: engine states (weights, optimizer, scheduler), the trainer State
        and the caller's `extra` (plain data it needs back on resume), tagged by iteration. Whether it saved."""
        every = self.config.checkpoint_every
        if not every or self.iteration == 0 or self.iteration % every:
            return False
        tag = f"iter{self.iteration:06d}"
        client = {"ppo": self.state().__dict__, "extra": extra or {}}
        ds.save_checkpoint(self.models.actor, f"{ckpt_dir}/actor", tag, client)
        if self.models.critic is not None:
            ds.save_checkpoint(self.models.critic, f"{ckpt_dir}/critic", tag)
        return True

    def load_checkpoint(self, ckpt_dir) -> dict | None:
        """Restore the latest checkpoint in `ckpt_dir` (training continues with the next iteration); its `extra`,
        None when there is no checkpoint there."""
        if not Path(ckpt_dir, "actor", "latest").exists():
            return None
        client = ds.load_checkpoint(self.models.actor, f"{ckpt_dir}/actor")
        if self.models.critic is not None:
            ds.load_checkpoint(self.models.critic, f"{ckpt_dir}/critic")
        self.load_state(client["ppo"])
        return client.get("extra", {})


def _std(x: torch.Tensor) -> float:
    return x.std().item() if len(x) > 1 else 0.0


def _all_gather(batch: Rollout) -> Rollout:
    """Every rank's rows in the global order of `prompt_indices` (rank r's row j is global row j*world + r).
    Tensors have the same shapes on every rank."""
    world_size = world()[1]
    if world_size == 1:
        return batch
    out = {}
    n_local = len(batch.input_ids)
    order = torch.arange(n_local * world_size).view(world_size, n_local).t().reshape(-1)
    for f in fields(batch):
        t = getattr(batch, f.name)
        parts = [torch.empty_like(t) for _ in range(world_size)]
        dist.all_gather(parts, t.contiguous())
        out[f.name] = torch.cat(parts)[order]
    return Rollout(**out)


def _gather_rows(rows: list[dict]) -> list[dict]:
    if world()[1] == 1:
        return rows
    parts = [None] * world()[1]
    dist.all_gather_object(parts, rows)
    return sorted((r for part in parts for r in part), key=lambda r: r["prompt_index"])


def _all_sum(stats: dict[str, float]) -> dict[str, float]:
    """Sum per-rank statistics over ranks."""
    if world()[1] == 1 or not stats:
        return stats
    t = torch.tensor(list(stats.values()), dtype=torch.float64)
    dist.all_reduce(t)
    return dict(zip(stats, t.tolist()))
