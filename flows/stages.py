"""One Prefect flow per stage that reads others, built from the stage registry: rerun that stage alone on stored
upstream outputs. `ppo_flow`, `dpo_flow`, ... are attributes of this module (the entrypoints prefect.yaml names,
`flows/stages.py:ppo_flow`), made on first access by `stage_flow`. Prefect 3.8.8 loads an entrypoint by importing
its file and reading the attribute (`import_object`), which a module-level `__getattr__` answers; it parses the
file's AST only when that import fails (missing dependencies), which does not happen where the flows run.

A stage flow's parameters are the pipeline config, one `<upstream>_uri` per stage it may read (empty: this config's
own stored output, computed and cached when missing), `force`, `preset` and `overrides`: all with defaults the
Prefect UI's Run button can send as they are. Prefect reads a flow's parameters from its function's signature and
their descriptions from its docstring's `Args:` section, so both are written here for each stage.
"""
from __future__ import annotations

import functools
import inspect

from prefect import Flow, flow

from components.config.pipeline import PipelineConfig
from components.config.stages import policy_stages, stage_names
from components.config.stages import stage as spec_of
from flows.pipeline import Preset, run_stage, upstream_of
from tasks.context import open_context, resolve_config
from tasks.output import StageOutput

_P = inspect.Parameter


def readable(stage: str) -> tuple[str, ...]:
    """Every stage whose stored output stage `stage`'s flow may be given (what it reads, whatever the config)."""
    spec = spec_of(stage)
    return tuple(s for s in stage_names() if s in spec.reads or (spec.reads_policies and s in policy_stages()))


@functools.cache
def stage_flow(stage: str) -> Flow:
    """The flow `stage` (named as the stage, so its deployment is `<stage>/<stage>-adhoc`)."""
    if not spec_of(stage).has_flow:
        raise AttributeError(f"stage {stage!r} reads no other stage: it has no stage flow")
    uris = [f"{name}_uri" for name in readable(stage)]

    def rerun(**params) -> StageOutput:
        config = resolve_config(params.pop("config"), params.pop("preset"), params.pop("overrides"))
        ctx = open_context(config, f"{config.name}-{stage}", {stage} if params.pop("force") else set())
        with ctx.tracker.finishing(ctx.parent_run_id):
            return run_stage(stage, config, upstream_of(stage, config, ctx, **params), ctx)

    rerun.__name__ = rerun.__qualname__ = f"{stage}_flow"
    rerun.__signature__ = inspect.Signature(  # keyword-only: Prefect passes them by name
        [_P("config", _P.KEYWORD_ONLY, annotation=PipelineConfig)]
        + [_P(uri, _P.KEYWORD_ONLY, default=None, annotation=str | None) for uri in uris]
        + [_P("force", _P.KEYWORD_ONLY, default=True, annotation=bool),
           _P("preset", _P.KEYWORD_ONLY, default=None, annotation=Preset | None),
           _P("overrides", _P.KEYWORD_ONLY, default=None, annotation=list[str] | None)],
        return_annotation=StageOutput)
    rerun.__doc__ = _docstring(stage)
    return flow(name=stage)(rerun)


def _docstring(stage: str) -> str:
    spec, names = spec_of(stage), readable(stage)
    lines = [f"Rerun one stage alone. {spec.description}", "", "Args:",
             "    config: The pipeline config (the deployment's default is configs/demo.yaml)."]
    for i, name in enumerate(names):
        if name in policy_stages() and spec.reads_policies:
            text = f"The stored {name} policy, when `policies` names {name}; empty: this config's own."
        elif i == 0:
            text = f"A stored {name} output (s3://... or a path, as `rlhf runs` lists); empty: this config's own."
        else:
            text = f"A stored {name} output; empty: this config's own (computed and cached when missing)."
        lines.append(f"    {name}_uri: {text}")
    example = f"{spec.config}.seed=1" if spec.config else "sft.lr=2e-5"
    lines += ["    force: Recompute the stage even when a stored output with the same cache key exists.",
              "    preset: Start from configs/{preset}.yaml instead of `config`.",
              f"    overrides: Dotted KEY=VALUE lines applied on top, e.g. {example}."]
    return "\n".join(lines) + "\n"


def __getattr__(name: str) -> Flow:
    """`<stage>_flow`: the stage's flow (module attributes made on access, PEP 562)."""
    stage = name.removesuffix("_flow")
    if name.endswith("_flow") and stage in stage_names():
        return stage_flow(stage)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
