"""The same PPO workload as ppo_throughput.py on Hugging Face TRL 1.12's PPOTrainer (the last TRL with PPO),
so the comparison is measured on this machine rather than quoted. TRL is not a dependency of this project; run
it in its own environment:

    python -m venv /tmp/trlenv && /tmp/trlenv/bin/pip install torch==2.13.0 trl==1.12.0
    /tmp/trlenv/bin/python benchmarks/trl_ppo_baseline.py [--model .rlhf/fixtures/smollm2 --iterations 4]

TRL's PPOTrainer always uses a value model with its own backbone (our --separate-critic layout). The last line
printed is one JSON object with the median seconds per PPO iteration after one warm-up iteration.

With --model DIR the workload is ppo_throughput.py --model's: policy, reference, reward and value models from DIR
(fresh scalar heads), chat-templated review prompts, 16 prompts per iteration, 24 new tokens, 2 epochs x 2
minibatches of 8.
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import random
import statistics
import tempfile
import time

import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel, TrainerCallback
from trl.experimental.ppo import PPOConfig, PPOTrainer

from ppo_throughput import word_level_tokenizer

ITERATIONS = 30


class IterationTimer(TrainerCallback):
    def __init__(self):
        self.times, self.last = [], None

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now


def real_model(model_dir: str, iterations: int, bf16: bool = False):
    """(tokenizer, policy, reference, reward, value, prompts, args) for the real-model workload on `model_dir`."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    reward, value = (AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1, dtype=torch.float32)
                     for _ in range(2))
    for m in (reward, value):
        m.config.pad_token_id = tok.pad_token_id
    words = "Silent Golden Hidden Crimson Paper Iron Winter Quiet".split(), "Harbor Garden River Letter Station".split()
    texts = [f"Review of The {a} {b}:" for a in words[0] for b in words[1]]
    prompts = [tok.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True,
                                       return_dict=False) for t in texts]
    args = PPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=16, gradient_accumulation_steps=1,
                     num_mini_batches=2, num_ppo_epochs=2, response_length=24, stop_token=None, temperature=1.0,
                     kl_coef=0.05, learning_rate=1e-5, total_episodes=iterations * 16,
                     local_rollout_forward_batch_size=16, num_sample_generations=0, report_to=[], use_cpu=True,
                     save_strategy="no", logging_steps=10**6, disable_tqdm=True, seed=0, bf16=bf16)
    return tok, policy, copy.deepcopy(policy), reward, value, prompts, args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a save_pretrained causal LM dir: the real-model workload")
    parser.add_argument("--iterations", type=int, default=ITERATIONS)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="bf16: TRL's bf16=True (accelerate's bf16 autocast, fp32 weights), real-model workload")
    cli = parser.parse_args()
    torch.set_num_threads(2)
    if cli.model:
        tok, policy, reference, reward, value, prompts, args = real_model(cli.model, cli.iterations,
                                                                          cli.precision == "bf16")
        return train(tok, policy, reference, reward, value, prompts, args,
                     f"ppo {cli.model} batch16 new24 2x2 {cli.precision}")
    tok = word_level_tokenizer()
    config = GPT2Config(n_layer=2, n_embd=128, n_head=4, n_positions=128, vocab_size=1024, pad_token_id=0,
                        eos_token_id=1, bos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, num_labels=1)
    torch.manual_seed(0)
    policy = GPT2LMHeadModel(config)
    reference = copy.deepcopy(policy)
    reward = GPT2ForSequenceClassification(config)
    value = GPT2ForSequenceClassification(config)
    rng = random.Random(0)
    prompts = [[rng.randrange(4, 1024) for _ in range(rng.randint(8, 16))] for _ in range(256)]
    args = PPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=32, gradient_accumulation_steps=1,
                     num_mini_batches=4, num_ppo_epochs=4, response_length=32, stop_token=None, temperature=1.0,
                     kl_coef=0.05, learning_rate=1e-5, total_episodes=cli.iterations * 32,
                     local_rollout_forward_batch_size=32, num_sample_generations=0, report_to=[], use_cpu=True,
                     save_strategy="no", logging_steps=10**6, disable_tqdm=True, seed=0)
    # TRL's batch: per_device_train_batch_size x accumulation = 32 prompts per iteration, split into
    # num_mini_batches = 4 minibatches of 8, one optimizer step each, for 4 epochs: 16 steps per iteration.
    train(tok, policy, reference, reward, value, prompts, args, "ppo gpt2-2x128 vocab1024 batch32 new32 4x4")


def train(tok, policy, reference, reward, value, prompts, args, workload: str) -> None:
    timer = IterationTimer()
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=reference, reward_model=reward,
                         value_model=value, train_dataset=Dataset.from_dict({"input_ids": prompts}), callbacks=[timer])
    trainer.train()
    print(json.dumps({"trainer": "trl 1.12.0 PPOTrainer (separate value model)", "workload": workload,
                      "iterations": len(timer.times), "threads": torch.get_num_threads(),
                      "s_per_iter": round(statistics.median(timer.times[1:]), 4),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


if __name__ == "__main__":
    main()
