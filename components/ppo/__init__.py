"""PPO for language models on DeepSpeed: `components.ppo.train(prompts=..., reward_fn=...)` or the pipeline
stage `components.ppo.run(...)`. The math is in `losses`, the phases in `trainer`, the sampling in `rollout`.
The entry points load lazily, so reading a PPOConfig does not import DeepSpeed."""
from components.ppo.config import PPOConfig

__all__ = ["PPOConfig", "PPOResult", "run", "train"]


def __getattr__(name: str):
    if name in ("PPOResult", "run", "train"):
        from components.ppo import api
        return getattr(api, name)
    raise AttributeError(name)
