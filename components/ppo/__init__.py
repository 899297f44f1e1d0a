"""PPO for language models on DeepSpeed: `components.ppo.train(prompts=..., reward_fn=...)` or the pipeline
stage `components.ppo.api.run`. The math is in `losses` and `advantages`, the KL control in `kl`, reward shaping in
`shaping`, the phases in `trainer`; sampling, reward terms and the training loop are the RL core's
(`components.rl`). The entry points load lazily, so reading a PPOConfig does not import DeepSpeed."""
from components.ppo.config import PPOConfig

__all__ = ["PPOConfig", "run", "train"]


def __getattr__(name: str):
    if name in ("run", "train"):
        from components.ppo import api
        return getattr(api, name)
    raise AttributeError(name)
