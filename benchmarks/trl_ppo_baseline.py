"""The same PPO workload as ppo_throughput.py on Hugging Face TRL 1.12's PPOTrainer (the last TRL with PPO),
so the comparison is measured on this machine rather than quoted. TRL is not a dependency of this project; run
it in its own environment:

    python -m venv /tmp/trlenv && /tmp/trlenv/bin/pip install torch==2.13.0 trl==1.12.0
    /tmp/trlenv/bin/python benchmarks/trl_ppo_baseline.py

TRL's PPOTrainer always uses a value model with its own backbone (our --separate-critic layout). The last line
printed is one JSON object with the median seconds per PPO iteration after one warm-up iteration.
"""
from __future__ import annotations

import copy
import json
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


def main() -> None:
    torch.set_num_threads(2)
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
                     kl_coef=0.05, learning_rate=1e-5, total_episodes=ITERATIONS * 32,
                     local_rollout_forward_batch_size=32, num_sample_generations=0, report_to=[], use_cpu=True,
                     save_strategy="no", logging_steps=10**6, disable_tqdm=True, seed=0)
    # TRL's batch: per_device_train_batch_size x accumulation = 32 prompts per iteration, split into
    # num_mini_batches = 4 minibatches of 8, one optimizer step each, for 4 epochs: 16 steps per iteration.
    timer = IterationTimer()
    trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=reference, reward_model=reward,
                         value_model=value, train_dataset=Dataset.from_dict({"input_ids": prompts}), callbacks=[timer])
    trainer.train()
    print(json.dumps({"trainer": "trl 1.12.0 PPOTrainer (separate value model)", "iterations": len(timer.times),
                      "threads": torch.get_num_threads(),
                      "s_per_iter": round(statistics.median(timer.times[1:]), 4)}))


if __name__ == "__main__":
    main()
