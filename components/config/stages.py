"""The stage registry: every stage of the pipeline declared once, in pipeline order.

A `StageSpec` says what a stage is called, its version (part of its cache key), where its config lives in
`PipelineConfig`, which stages' outputs it reads (and when), whether it trains a policy or can use several ranks,
which pipeline-level settings it reads (they join its cache key), and its entry point `run(config, inputs, out,
hooks)`, imported only when the stage runs. Everything that used to list the stages by hand derives from here:
the pipeline's order, `policies` validation, the Prefect tasks and stage flows, the deployments in prefect.yaml,
the CLI's choices and the per-policy metric names. A new stage is one `register(StageSpec(...))` and its folder.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The pipeline-level settings a stage may read besides its own config section. Each maps a PipelineConfig to a
# plain (JSON) value; a stage's declared ones are handed to it in `Inputs.settings` and join its cache key under
# these names. `c` is a PipelineConfig (not imported: it imports this module).
SETTINGS: dict[str, Callable[[Any], Any]] = {
    "data.max_length": lambda c: c.data.max_length,
    "gold": lambda c: c.gold_fn,  # the gold scorer of held-out samples, module:function or None
    "select_by": lambda c: c.promotion_metric,  # what picks the candidate among several policies
    "scorer": lambda c: c.ppo.reward_model.model_dump(mode="json") if c.ppo.reward_model else None,
}


def _rewarded_by_the_reward_stage(section: str) -> Callable[[Any], bool]:
    """An RL stage reads the reward stage's model only when a term of its `rewards` is the reward model and its
    `reward_model` names none, so a verifiable-reward run's key does not change with the reward model."""
    def reads(c) -> bool:
        own = getattr(c, section)
        return own.uses_reward_model and own.reward_model is None
    return reads


@dataclass(frozen=True)
class StageSpec:
    """One stage of the pipeline."""

    name: str
    version: str  # part of the cache key: bump it when the stage computes something else from the same inputs
    entry: str  # module:function called as run(config, inputs, out, hooks) -> metrics; imported when it runs
    config: str | None  # the PipelineConfig field holding the stage's config section (None: it has none)
    reads: tuple[str, ...] = ()  # the stages whose outputs it reads
    reads_when: dict[str, Callable[[Any], bool]] = field(default_factory=dict)  # a read that holds only when...
    reads_policies: bool = False  # it reads every policy stage `policies` names (the evaluation)
    reads_champion: bool = False  # it reads the registry's champion too, when that is none of the policies
    reads_feedback: bool = False  # its config's `feedback` URIs (stored feedback datasets) are inputs too
    settings: tuple[str, ...] = ()  # keys of SETTINGS it reads
    policy: bool = False  # trains a candidate policy from the SFT model; runs when `policies` names it
    trains: bool = False  # a training stage: retried by resuming its checkpoint, may run on several ranks
    algorithm: Callable[[Any], str] | None = None  # the algorithm a policy stage trains with (default: its name)
    description: str = ""  # one line: the stage flow's summary

    def settings_of(self, config) -> dict[str, Any]:
        """The pipeline-level settings this stage reads, from `config` (a PipelineConfig)."""
        return {key: SETTINGS[key](config) for key in self.settings}

    @property
    def has_flow(self) -> bool:
        """A stage with upstream stages has a flow (and an `<stage>-adhoc` deployment) to rerun it alone."""
        return bool(self.reads or self.reads_policies)


_STAGES: dict[str, StageSpec] = {}


def register(spec: StageSpec, before: str | None = None) -> StageSpec:
    """Add `spec` to the registry, at the end or just before the stage `before`. Policy stages go before the
    evaluation (which reads them); a stage may read only stages registered before it."""
    if spec.name in _STAGES:
        raise ValueError(f"stage {spec.name!r} is registered already")
    unknown = [s for s in spec.reads if s not in _STAGES]
    if unknown:
        raise ValueError(f"stage {spec.name!r} reads {unknown}, which are not registered before it")
    unknown = [k for k in spec.settings if k not in SETTINGS]
    if unknown:
        raise ValueError(f"stage {spec.name!r} reads unknown settings {unknown}; known: {sorted(SETTINGS)}")
    items = list(_STAGES.items())
    at = len(items) if before is None else [name for name, _ in items].index(before)
    _STAGES.clear()
    _STAGES.update(items[:at] + [(spec.name, spec)] + items[at:])
    return spec


def unregister(name: str) -> None:
    """Remove a stage (what a test that registered one does when it ends)."""
    del _STAGES[name]


def stage(name: str) -> StageSpec:
    """The registered stage `name`; a KeyError naming the registered ones otherwise."""
    try:
        return _STAGES[name]
    except KeyError:
        raise KeyError(f"no stage {name!r}; registered: {', '.join(_STAGES)}") from None


def stages() -> tuple[StageSpec, ...]:
    """Every registered stage, in pipeline order."""
    return tuple(_STAGES.values())


def stage_names() -> tuple[str, ...]:
    return tuple(_STAGES)


def policy_stages() -> tuple[str, ...]:
    """The stages that train a candidate policy, in pipeline order."""
    return tuple(s.name for s in _STAGES.values() if s.policy)


def upstream_names() -> tuple[str, ...]:
    """The stages some other stage reads (what a stage flow or `rlhf stage` may be given a stored output of)."""
    read = {r for s in _STAGES.values() for r in s.reads} | set(policy_stages())
    return tuple(name for name in _STAGES if name in read)


def _ppo_algorithm(c) -> str:
    return c.ppo.algorithm  # ppo (GAE), grpo, rloo or reinforce_pp: ppo.advantage


register(StageSpec("data", "1", "components.data.stage:run", "data",
                   description="Data prep: the SFT, preference and held-out prompt splits, with a manifest."))
register(StageSpec("sft", "1", "components.sft.train:run", "sft", reads=("data",), settings=("data.max_length",),
                   trains=True, description="Supervised fine-tuning on a stored data prep output."))
register(StageSpec("reward", "1", "components.reward.train:run", "reward", reads=("data", "sft"), reads_feedback=True,
                   settings=("data.max_length",), trains=True,
                   description="The reward model on stored data prep and SFT outputs."))
register(StageSpec("ppo", "1", "components.ppo.api:run", "ppo", reads=("data", "sft", "reward"),
                   reads_when={"reward": _rewarded_by_the_reward_stage("ppo")}, settings=("data.max_length", "gold"),
                   policy=True, trains=True, algorithm=_ppo_algorithm,
                   description="PPO (or GRPO, RLOO, REINFORCE++: ppo.advantage) on stored data prep, SFT and reward "
                               "model outputs."))
register(StageSpec("dpo", "1", "components.dpo.train:run", "dpo", reads=("data", "sft"), reads_feedback=True,
                   settings=("data.max_length",), policy=True, trains=True,
                   description="DPO on stored data prep and SFT outputs (it needs no reward model)."))
register(StageSpec("es", "1", "components.es.train:run", "es", reads=("data", "sft", "reward"),
                   reads_when={"reward": _rewarded_by_the_reward_stage("es")}, settings=("gold",), policy=True,
                   trains=True, description="Evolution strategies on stored data prep, SFT and (when es.rewards uses "
                                            "it) reward model outputs."))
register(StageSpec("evaluate", "2", "components.evaluation.stage:run", "evaluate", reads=("data", "sft", "reward"),
                   reads_policies=True, reads_champion=True,
                   settings=("data.max_length", "gold", "select_by", "scorer"),
                   description="The evaluation of each policy `policies` names, on stored outputs."))
