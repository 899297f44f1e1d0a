"""RL throughput on a fixed workload (issue 3; critic-free estimators, issue 14); the last line printed is one JSON
object.

    python benchmarks/ppo_throughput.py [--separate-critic] [--zero-stage N] [--iterations 30]
    python benchmarks/ppo_throughput.py --advantage grpo [--num-generations 4] [--kl-coef 0]
    python benchmarks/ppo_throughput.py --model .rlhf/fixtures/smollm2 [--lora 16] [--precision bf16|bf16-true]
        [--iterations 5] [--gradient-checkpointing]

The critic-free estimators (`--advantage grpo|rloo|reinforce_pp`) keep the samples per iteration and the minibatch
shape: batch / num_generations prompts x num_generations samples; they train no value head and, with
`--kl-coef 0`, load no reference (no reference forward either).

Workload: policy, reference and reward model are GPT-2 configs (2 layers, hidden 128, 4 heads, 128 positions,
vocab 1024, fp32, random init, fixed seeds) with a WordLevel tokenizer of 1024 entries ([PAD]=0 [EOS]=1 [BOS]=2
[UNK]=3, then w4..w1023), left padding; 256 prompts of 8-16 uniformly random tokens; 32 prompts per iteration;
exactly 32 new tokens each at temperature 1.0; 4 PPO epochs x 4 minibatches of 8; KL coef 0.05; lr 1e-5.

floor_s is the sum of the irreducible pieces, timed in this process on the same models: one batched generate,
the no-grad forwards a rollout needs (reference and reward model, and the critic when it is separate), and 16
forward+backward+step passes on minibatches of 8 (actor, and critic when separate; `optimizer_step` is the steps'
share). floor_ratio = s_per_iter / floor_s. With --precision bf16 (and bf16-true) the rollout also recomputes the
old log-probs with a training-shaped forward (in `score`), which the floor leaves out.

update_gflop counts one iteration's update (torch's FLOP counter on a minibatch of the first prompts, times
epochs x minibatches); update_gflop_per_s divides it by the median update time and update_fraction_of_peak sets
that against matmul_peak_gflop_per_s, a 1024^3 matmul in the training dtype on the same threads.

With --model DIR (a save_pretrained causal LM, e.g. SmolLM2-135M-Instruct: 30 layers, vocab 49k) the workload is
the real-model one: policy and reference from DIR, the reward model DIR's trunk with a fresh scalar head; 64
demo review prompts rendered with DIR's chat template; 16 prompts per iteration, exactly 24 new tokens, 2 PPO
epochs x 2 minibatches of 8; fp32 unless --precision bf16 (or bf16-true). peak_rss_mb is the process's peak
resident memory.
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import statistics
import time

import torch


def word_level_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[EOS]": 1, "[BOS]": 2, "[UNK]": 3, **{f"w{i}": i for i in range(4, 1024)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]", bos_token="[BOS]",
                                   unk_token="[UNK]", padding_side="left")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--separate-critic", action="store_true", help="critic with its own backbone")
    parser.add_argument("--zero-stage", type=int, default=0, choices=(0, 1, 2, 3))
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "bf16-true"))
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--model", help="a save_pretrained causal LM dir: the real-model workload")
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank on the policy (0: full fine-tuning)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    parser.add_argument("--advantage", default="gae", choices=("gae", "grpo", "rloo", "reinforce_pp"))
    parser.add_argument("--num-generations", type=int, default=4, help="samples per prompt (critic-free only)")
    parser.add_argument("--kl-coef", type=float, default=0.05, help="0: no reference model is loaded")
    parser.add_argument("--floor-repeats", type=int, default=5, help="timings of each floor piece (median)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    logging.basicConfig(level=logging.WARNING)
    from components.ppo.api import build_models
    from components.rl.driver import encode_prompts
    from components.rl.rewards import RewardTerm
    from components.ppo.trainer import PPOTrainer

    config, tokenizer, texts, policy, scorer, workload = (real_model(args) if args.model else toy(args))
    models = build_models(config, tokenizer, policy, scorer)
    max_positions = models.actor.module.lm.config.max_position_embeddings
    new = config.rollout.max_new_tokens
    trainer = PPOTrainer(config, models, tokenizer, encode_prompts(tokenizer, texts, new, max_positions), texts,
                         [RewardTerm("reward_model")])

    per_iter, breakdown = [], []
    for _ in range(args.iterations):
        stats = trainer.step()
        per_iter.append(stats["time/iteration"])
        breakdown.append({k: stats[f"time/{k}"] for k in ("generate", "score", "update")})
    floor = measure_floor(trainer, args.floor_repeats)
    flops = update_flops(trainer) * config.ppo_epochs * config.num_minibatches
    peak = matmul_peak(args.precision)
    s_per_iter = statistics.median(per_iter[1:])
    update_s = statistics.median(b["update"] for b in breakdown[1:])
    samples = config.batch_size * config.num_generations
    print(json.dumps({
        "workload": workload, "lora": args.lora or None, "advantage": config.advantage,
        "num_generations": config.num_generations, "kl_coef": config.kl.coef,
        "critic": config.critic if config.uses_critic else None,
        "reference": "copy" if models.reference is not None else "lora base" if config.uses_reference else None,
        "zero_stage": args.zero_stage, "precision": args.precision,
        "gradient_checkpointing": args.gradient_checkpointing, "threads": torch.get_num_threads(),
        "iterations": args.iterations,
        "s_per_iter": round(s_per_iter, 4),
        "samples_per_s": round(samples / s_per_iter, 2),
        "gen_tokens_per_s": round(samples * new / statistics.median(b["generate"] for b in breakdown[1:]), 1),
        "breakdown": {k: round(statistics.median(b[k] for b in breakdown[1:]), 4) for k in breakdown[0]},
        "floor_s": round(floor["total"], 4), "floor_breakdown": {k: round(v, 4) for k, v in floor.items()},
        "floor_ratio": round(s_per_iter / floor["total"], 3),
        "update_gflop": round(flops / 1e9, 1), "update_gflop_per_s": round(flops / update_s / 1e9, 1),
        "matmul_peak_gflop_per_s": round(peak / 1e9, 1), "update_fraction_of_peak": round(flops / update_s / peak, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


def estimator(args, samples: int) -> dict:
    """The config fields that pick the estimator; `samples` per iteration whatever the group size."""
    groups = args.num_generations if args.advantage != "gae" else 1
    return {"advantage": args.advantage, "num_generations": groups, "batch_size": samples // groups,
            "critic": "separate" if args.separate_critic else "value_head", "kl": {"coef": args.kl_coef}}


def compute(args) -> dict:
    return {"zero_stage": args.zero_stage, "micro_batch_size": 8, "precision": args.precision,
            "gradient_checkpointing": args.gradient_checkpointing}


def toy(args):
    """The issue-3 workload: GPT-2 2x128 from a config, word-level vocabulary of 1024, random prompts."""
    from components.models.config import ArchSpec, ModelSpec, ScorerSpec
    from components.ppo.config import PPOConfig

    config = PPOConfig(iterations=args.iterations, ppo_epochs=4, num_minibatches=4, lr=1e-5,
                       rollout={"max_new_tokens": 32, "temperature": 1.0, "stop_at_eos": False},
                       compute=compute(args), seed=0,
                       lora={"r": args.lora} if args.lora else None, **estimator(args, samples=32))
    arch = ArchSpec(type="gpt2", n_layer=2, hidden_size=128, n_head=4, max_positions=128, dropout=0.0)
    rng = random.Random(0)
    texts = [" ".join(f"w{rng.randrange(4, 1024)}" for _ in range(rng.randint(8, 16))) for _ in range(256)]
    return config, word_level_tokenizer(), texts, ModelSpec(arch=arch), ScorerSpec(arch=arch), "gpt2-2x128 vocab1024 batch32 new32 4x4 minibatch8"


def real_model(args):
    """The real-model workload on `args.model`: chat-templated demo prompts, batch 16, 24 new tokens, 2x2 of 8."""
    import tempfile

    from components.data import demo
    from components.models.config import ModelSpec, ScorerSpec
    from components.models.loading import load_tokenizer, reward_model, save_pretrained
    from components.ppo.config import PPOConfig

    tokenizer = load_tokenizer(args.model)
    config = PPOConfig(iterations=args.iterations, ppo_epochs=2, num_minibatches=2, lr=1e-5,
                       rollout={"max_new_tokens": 24, "temperature": 1.0, "stop_at_eos": False},
                       compute=compute(args), seed=0,
                       lora={"r": args.lora, "alpha": 2 * args.lora} if args.lora else None,
                       **estimator(args, samples=16))
    rm_dir = tempfile.mkdtemp(prefix="rm-")  # the model's trunk with a fresh scalar head, as the reward stage starts
    torch.manual_seed(0)
    save_pretrained(reward_model(ModelSpec(name_or_path=args.model), tokenizer, "reward"), tokenizer, rm_dir)
    chats = demo.as_chat(demo.eval_prompts(random.Random(0), 64))
    texts = [tokenizer.apply_chat_template(c["prompt"], tokenize=False, add_generation_prompt=True) for c in chats]
    name = f"{args.model} batch16 new24 2x2 minibatch8"
    return config, tokenizer, texts, ModelSpec(name_or_path=args.model), ScorerSpec(name_or_path=rm_dir), name


def measure_floor(trainer, repeats: int = 5) -> dict[str, float]:
    """Median over `repeats` of each irreducible piece, on the trainer's own models and a real rollout batch:
    generate, the rollout's no-grad forwards, and the update split into forward+backward and optimizer steps."""
    from components.compute.engine import for_generation
    from components.models.precision import autocast
    from components.rl.generation import left_pad, response_logprobs, response_values, sampling_processors
    from components.reward.scoring import right_align

    models, tok, c = trainer.models, trainer.tokenizer, trainer.config
    new, mb, samples = c.rollout.max_new_tokens, c.minibatch_size, c.batch_size * c.num_generations
    ids, mask = left_pad((trainer.prompts * c.num_generations)[:samples], tok.pad_token_id)
    reference = ((models.reference if models.reference is not None else models.actor.module.lm)
                 if c.uses_reference else None)
    times: dict[str, list[float]] = {"generate": [], "forwards": [], "update": [], "optimizer_step": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad(), for_generation(models.actor) as actor:
            out = actor.lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                    do_sample=False, logits_processor=sampling_processors(c.rollout),
                                    eos_token_id=None, pad_token_id=tok.pad_token_id)
        t1 = time.perf_counter()
        full_mask = torch.cat([mask, torch.ones(len(ids), new, dtype=mask.dtype)], 1)
        with torch.no_grad(), autocast(c.compute.precision):
            if reference is not None:
                response_logprobs(reference, out, full_mask, new)
            models.scorer.model(*right_align(out, full_mask, tok.pad_token_id))
            if models.critic is not None:
                response_values(models.critic, out, full_mask, new)
        t2 = time.perf_counter()
        steps = 0.0
        for k in range(c.ppo_epochs * c.num_minibatches):
            rows = slice(mb * (k % c.num_minibatches), mb * (k % c.num_minibatches) + mb)
            steps += forward_backward(models, out[rows], full_mask[rows], new)
        times["generate"].append(t1 - t0)
        times["forwards"].append(t2 - t1)
        times["update"].append(time.perf_counter() - t2)
        times["optimizer_step"].append(steps)
    floor = {k: statistics.median(v) for k, v in times.items()}
    floor["total"] = floor["generate"] + floor["forwards"] + floor["update"]  # the update includes its steps
    return floor


def forward_backward(models, input_ids, attention_mask, new: int) -> float:
    """One PPO-shaped training step of the actor (and separate critic) through their engines (so under their
    autocast); returns the seconds spent in optimizer steps."""
    from components.rl.generation import response_values

    models.actor.backward(stand_in_loss(*models.actor(input_ids, attention_mask, new)))
    if models.critic is not None:
        models.critic.backward(response_values(models.critic, input_ids, attention_mask, new).mean())
    t = time.perf_counter()
    models.actor.step()
    if models.critic is not None:
        models.critic.step()
    return time.perf_counter() - t


def stand_in_loss(logits: torch.Tensor, values: torch.Tensor | None) -> torch.Tensor:
    """A scalar through every output of the actor (logits and value head), for timing and counting a backward."""
    return logits.float().mean() + (values.mean() if values is not None else 0.0)


def update_flops(trainer) -> float:
    """Floating-point operations of one update minibatch's forward + backward (torch's FLOP counter: matmuls
    and attention), on a real rollout batch's shape."""
    from torch.utils.flop_counter import FlopCounterMode

    from components.models.precision import autocast
    from components.rl.generation import left_pad

    c, tok = trainer.config, trainer.tokenizer
    new, mb = c.rollout.max_new_tokens, c.minibatch_size
    ids, mask = left_pad(trainer.prompts[:mb], tok.pad_token_id)
    ids = torch.cat([ids, torch.full((mb, new), tok.eos_token_id)], 1)
    mask = torch.cat([mask, torch.ones(mb, new, dtype=mask.dtype)], 1)
    actor = trainer.models.actor.module  # counted outside the engine, which forbids a bare backward
    counter = FlopCounterMode(display=False)
    with counter:
        with autocast(c.compute.precision):
            outputs = actor(ids, mask, new)
        torch.autograd.grad(stand_in_loss(*outputs), [p for p in actor.parameters() if p.requires_grad])
    return float(counter.get_total_flops())


def matmul_peak(precision: str, n: int = 1024, repeats: int = 20) -> float:
    """Measured FLOP/s of an n x n x n matmul in the training dtype on this process's threads: the machine's
    compute ceiling that the update's achieved FLOP/s is set against."""
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - t)


if __name__ == "__main__":
    main()
