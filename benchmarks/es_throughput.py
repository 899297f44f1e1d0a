"""Evolution strategies on ppo_throughput.py's workloads; the last line printed is one JSON object.

    python benchmarks/es_throughput.py [--iterations 10] [--population 32]
    python benchmarks/es_throughput.py --model .rlhf/fixtures/smollm2 [--lora 16] [--iterations 3] [--population 8]

The policy, reward model, tokenizer and prompts are ppo_throughput.py's (toy: GPT-2 2x128 from a config, 32 random
prompts per iteration, 32 new tokens; --model DIR: DIR as policy, its trunk with a fresh scalar head as reward model,
16 chat-templated demo prompts, 24 new tokens), full fine-tuning unless --lora. Every member answers every prompt
greedily. peak_rss_mb is the process's peak resident memory: compare it with ppo_throughput.py on the same model,
which holds the policy, its AdamW state and gradients, a reference copy and the reward model; ES holds the policy
and the reward model only (no gradients, no optimizer state, no reference), plus one layer's noise at a time.
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--model", help="a save_pretrained causal LM dir: the real-model workload")
    parser.add_argument("--lora", type=int, default=0, help="LoRA rank (0: perturb every weight)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    logging.basicConfig(level=logging.WARNING)
    import ppo_throughput

    from components.compute import engine as ds
    from components.es.config import ESConfig
    from components.es.train import ES
    from components.models.loading import causal_lm, disable_dropout
    from components.models.lora import trainable
    from components.rl.driver import encode_prompts
    from components.rl.rewards import Reward, RewardTerm
    from components.reward.scoring import load_scorer

    setup = argparse.Namespace(model=args.model, separate_critic=False, zero_stage=0, iterations=args.iterations,
                               lora=args.lora, advantage="gae", num_generations=1, kl_coef=0.05, precision="fp32",
                               gradient_checkpointing=False)
    ppo, tokenizer, texts, policy, scorer_spec, workload = (ppo_throughput.real_model(setup) if args.model
                                                             else ppo_throughput.toy(setup))
    config = ESConfig(population_size=args.population, batch_size=ppo.batch_size, iterations=args.iterations,
                      rollout={"max_new_tokens": ppo.rollout.max_new_tokens, "temperature": 0},
                      lora=ppo.lora, compute={"micro_batch_size": 64}, sigma=1e-3, lr=5e-4)
    ds.init_distributed()
    torch.manual_seed(0)
    lm = trainable(disable_dropout(causal_lm(policy, tokenizer, field="es.model")), config.lora, "CAUSAL_LM").eval()
    scorer = load_scorer(scorer_spec, tokenizer, "es.reward_model", seed=2)
    prompts = encode_prompts(tokenizer, texts, config.rollout.max_new_tokens, lm.config.max_position_embeddings)
    es = ES(config, lm, tokenizer, Reward([RewardTerm("reward_model")], scorer), prompts, texts)
    per_iter, evaluate, update = [], [], []
    for _ in range(args.iterations):  # batch_size prompts drawn per iteration
        stats = es.step()
        per_iter.append(stats["time/iteration"])
        evaluate.append(stats["time/evaluate"])
        update.append(stats["time/update"])
    print(json.dumps({
        "workload": f"es {workload.split(' batch')[0]} batch{config.batch_size} new{config.rollout.max_new_tokens} greedy",
        "population": args.population, "lora": args.lora or None,
        "trainable_params": sum(p.numel() for p in es.params), "threads": torch.get_num_threads(),
        "iterations": args.iterations, "s_per_iter": round(statistics.median(per_iter[1:] or per_iter), 3),
        "breakdown": {"evaluate": round(statistics.median(evaluate[1:] or evaluate), 3),
                      "update": round(statistics.median(update[1:] or update), 3)},
        "members_per_s": round(args.population / statistics.median(per_iter[1:] or per_iter), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }))


if __name__ == "__main__":
    main()
