"""Evolution strategies (Salimans et al. 2017; Qiu et al. 2025): gradient-free fine-tuning of a policy from forward
passes only. `noise` perturbs and restores weights from integer seeds, `shaping` turns rewards into weights, `train`
holds `train(prompts, reward_fn=...)` and the pipeline stage `run`. `run` loads lazily, so reading an ESConfig does
not import the training stack."""
from components.es.config import ESConfig

__all__ = ["ESConfig", "run"]


def __getattr__(name: str):
    if name == "run":
        import importlib
        return importlib.import_module("components.es.train").run
    raise AttributeError(name)
