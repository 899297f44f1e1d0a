"""PPO for language models on DeepSpeed: `components.ppo.train(prompts=..., reward_fn=...)` or the pipeline
stage `components.ppo.run(...)`. The math is in `losses`, the phases in `trainer`, the sampling in `rollout`."""
from components.ppo.api import PPOResult, run, train
from components.ppo.config import PPOConfig

__all__ = ["PPOConfig", "PPOResult", "run", "train"]
