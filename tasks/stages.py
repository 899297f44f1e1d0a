"""One Prefect task per stage: typed config + upstream StageOutputs in, one components call, StageOutput out.

Caching is ours (tasks.runner), not Prefect's: a stored output is reused only if it still exists and verifies,
which a Prefect cache record cannot know. So every task has `cache_policy=NO_CACHE`. A training task is retried
once (RESUMING): like a rerun of the flow, the retry resumes from the stage's stored checkpoint, or stores a
finished output whose upload failed, never starting over. The registry tasks, pure I/O, retry too.
"""
from __future__ import annotations

import json
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from components.data.config import DataConfig
from components.dpo.config import DPOConfig
from components.errors import RLHFError
from components.es.config import ESConfig
from components.evaluation.config import EvaluationConfig, PromotionConfig
from components.evaluation.metrics import held_out
from components.io.store import StoreError
from components.models.config import ScorerSpec
from components.ppo.config import PPOConfig
from components.reward.config import RewardConfig
from components.sft.config import SFTConfig
from tasks.launcher import run_launched
from tasks.output import StageOutput
from tasks.runner import RunContext, execute, load_output
from tasks.tracking import KEY_METRICS

VERSIONS = {"data": "1", "sft": "1", "reward": "1", "ppo": "1", "dpo": "1", "es": "1", "evaluate": "2"}


def _worth_a_retry(task, task_run, state) -> bool:
    """Retry a failed training task (the retry resumes from its checkpoint, or stores its finished output) unless
    the error is the user's input or a store error no retry can fix: retrying those only delays the error."""
    error = state.data
    if isinstance(error, StoreError):
        return not error.permanent
    return not isinstance(error, RLHFError)


RESUMING = {"retries": 1, "retry_delay_seconds": 10, "retry_condition_fn": _worth_a_retry}


@task(name="data", version=VERSIONS["data"], cache_policy=NO_CACHE)
def data_task(config: DataConfig, ctx: RunContext) -> StageOutput:
    def compute(inputs, out, stage_run):
        from components.data.prepare import prepare  # imports in compute: a cached stage loads no ML code
        prepared = prepare(config, out)
        ctx.tracker.log_file(ctx.parent_run_id, "data_manifest.json", json.dumps(prepared.manifest, indent=1))
        return {f"data/rows/{k}": float(v) for k, v in prepared.manifest["counts"].items()}

    return execute("data", VERSIONS["data"], config, {}, compute, ctx)


@task(name="sft", version=VERSIONS["sft"], cache_policy=NO_CACHE, **RESUMING)
def sft_task(config: SFTConfig, max_length: int, data: StageOutput, ctx: RunContext) -> StageOutput:
    def compute(inputs, out, stage_run):
        if config.compute.num_processes > 1:
            return run_launched("sft", config, config.compute.num_processes, max_length, inputs, out, stage_run)
        from components.sft.train import run
        return run(config, inputs["data"], out, max_length, on_log=stage_run.on_log,
                   checkpoint_dir=stage_run.checkpoints, on_checkpoint=stage_run.on_checkpoint)

    return execute("sft", VERSIONS["sft"], config, {"data": data}, compute, ctx, {"data.max_length": max_length})


@task(name="reward", version=VERSIONS["reward"], cache_policy=NO_CACHE, **RESUMING)
def reward_task(config: RewardConfig, max_length: int, data: StageOutput, sft: StageOutput,
                ctx: RunContext) -> StageOutput:
    feedback = {f"feedback{i}": load_output(ctx.store, uri) for i, uri in enumerate(config.feedback)}

    def compute(inputs, out, stage_run):
        if config.compute.num_processes > 1:
            return run_launched("reward", config, config.compute.num_processes, max_length, inputs, out, stage_run,
                                feedback_dirs=[inputs[name] for name in feedback])
        from components.reward.train import run
        return run(config, inputs["data"], out, max_length, base_model=inputs["sft"], on_log=stage_run.on_log,
                   feedback_dirs=[inputs[name] for name in feedback], checkpoint_dir=stage_run.checkpoints,
                   on_checkpoint=stage_run.on_checkpoint)

    return execute("reward", VERSIONS["reward"], config, {"data": data, "sft": sft, **feedback}, compute, ctx,
                   {"data.max_length": max_length})


@task(name="ppo", version=VERSIONS["ppo"], cache_policy=NO_CACHE, **RESUMING)
def ppo_task(config: PPOConfig, max_length: int, gold: str | None, data: StageOutput, sft: StageOutput,
             reward: StageOutput | None, ctx: RunContext) -> StageOutput:
    """PPO (or GRPO, RLOO, REINFORCE++: ppo.advantage) from the SFT model, rewarded by ppo.rewards: the reward
    stage's model (`reward`; None when no term uses it or ppo.reward_model names another) and/or Python functions;
    held-out samples are scored by the gold scorer `gold` (module:function) when there is one."""
    def compute(inputs, out, stage_run):
        if config.compute.num_processes > 1:
            return run_launched("ppo", config, config.compute.num_processes, max_length, inputs, out,
                                stage_run, gold=gold)
        from components.evaluation.gold import load_gold
        from components.ppo import run

        def on_samples(iteration: int, rows: list[dict]) -> None:  # a table per PPO evaluation
            ctx.tracker.log_table(stage_run.run_id, rows, f"samples/iteration_{iteration:05d}.json")

        result = run(config, inputs["data"], out, inputs["sft"], inputs.get("reward"), max_length,
                     gold_fn=load_gold(gold), checkpoint_dir=stage_run.checkpoints, resume=True,
                     on_log=stage_run.on_log, on_samples=on_samples, on_checkpoint=stage_run.on_checkpoint)
        return result.metrics

    parents = {"data": data, "sft": sft, **({"reward": reward} if reward is not None else {})}
    return execute("ppo", VERSIONS["ppo"], config, parents, compute, ctx,
                   {"data.max_length": max_length, "gold": gold})


@task(name="dpo", version=VERSIONS["dpo"], cache_policy=NO_CACHE, **RESUMING)
def dpo_task(config: DPOConfig, max_length: int, data: StageOutput, sft: StageOutput, ctx: RunContext) -> StageOutput:
    """DPO from the SFT model on the preference pairs (and feedback datasets); the reward model is not an input,
    so changing it never retrains DPO. A rerun after a crash resumes from the stage's last checkpoint."""
    feedback = {f"feedback{i}": load_output(ctx.store, uri) for i, uri in enumerate(config.feedback)}

    def compute(inputs, out, stage_run):
        if config.compute.num_processes > 1:
            return run_launched("dpo", config, config.compute.num_processes, max_length, inputs, out, stage_run,
                                feedback_dirs=[inputs[name] for name in feedback])
        from components.dpo.train import run
        return run(config, inputs["data"], out, max_length, base_model=inputs["sft"], on_log=stage_run.on_log,
                   feedback_dirs=[inputs[name] for name in feedback], checkpoint_dir=stage_run.checkpoints,
                   on_checkpoint=stage_run.on_checkpoint)

    return execute("dpo", VERSIONS["dpo"], config, {"data": data, "sft": sft, **feedback}, compute, ctx,
                   {"data.max_length": max_length})


@task(name="es", version=VERSIONS["es"], cache_policy=NO_CACHE, **RESUMING)
def es_task(config: ESConfig, gold: str | None, data: StageOutput, sft: StageOutput, reward: StageOutput | None,
            ctx: RunContext) -> StageOutput:
    """Evolution strategies from the SFT model on PPO's prompts, rewarded by es.rewards (`reward`: the reward
    stage's model, None when no term uses it); a rerun after a crash resumes from the stage's checkpoint."""
    def compute(inputs, out, stage_run):
        if config.compute.num_processes > 1:
            return run_launched("es", config, config.compute.num_processes, 0, inputs, out, stage_run, gold=gold)
        from components.es.train import run
        from components.evaluation.gold import load_gold

        def on_samples(iteration: int, rows: list[dict]) -> None:
            ctx.tracker.log_table(stage_run.run_id, rows, f"samples/iteration_{iteration:05d}.json")

        return run(config, inputs["data"], out, inputs["sft"], inputs.get("reward"), gold_fn=load_gold(gold),
                   checkpoint_dir=stage_run.checkpoints, on_log=stage_run.on_log, on_samples=on_samples,
                   on_checkpoint=stage_run.on_checkpoint).metrics

    parents = {"data": data, "sft": sft, **({"reward": reward} if reward is not None else {})}
    return execute("es", VERSIONS["es"], config, parents, compute, ctx, {"gold": gold})


@task(name="evaluate", version=VERSIONS["evaluate"], cache_policy=NO_CACHE)
def evaluate_task(config: EvaluationConfig, max_length: int, gold: str | None, scorer: ScorerSpec | None,
                  select_by: str, data: StageOutput, sft: StageOutput, reward: StageOutput,
                  policies: dict[str, StageOutput], champion: StageOutput | None, ctx: RunContext) -> StageOutput:
    """Every trained policy (ppo, dpo, es) against SFT, each other and, when the registry has one, the champion (its
    fingerprint joins the key), scored by the reward model PPO used (`scorer`, i.e. ppo.reward_model, else the
    reward stage's model); the best by `select_by` is the candidate (eval/<q>)."""
    parents = {"data": data, "sft": sft, "reward": reward, **policies}
    if champion is not None and champion.fingerprint not in {p.fingerprint for p in policies.values()}:
        parents["champion"] = champion

    def compute(inputs, out, stage_run):
        from components.evaluation.evaluate import run
        from components.evaluation.gate import best_candidate
        from components.evaluation.gold import load_gold

        baselines = {"sft": inputs["sft"], **({"champion": inputs["champion"]} if "champion" in inputs else {})}
        metrics = run(config, inputs["data"], {name: inputs[name] for name in policies}, baselines,
                      scorer or ScorerSpec(name_or_path=str(inputs["reward"])), out, max_length,
                      gold_fn=load_gold(gold), select_by=select_by)
        ctx.tracker.tag(stage_run.run_id, {"rlhf.candidate": best_candidate(metrics, list(policies), select_by)})
        if metrics.get(held_out("reward_hacking")):
            ctx.tracker.tag(stage_run.run_id, {"rlhf.reward_hacking": "flagged"})
        stage_run.on_log(0, metrics)
        rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
        ctx.tracker.log_table(stage_run.run_id, rows, "samples.json")
        for name in ("report.html", "report.md", "curves.png", "frontier.png", "scores.png"):
            ctx.tracker.client.log_artifact(stage_run.run_id, str(out / name), "report")
        _prefect_report(out, metrics)
        return metrics

    return execute("evaluate", VERSIONS["evaluate"], config, parents, compute, ctx,
                   {"data.max_length": max_length, "gold": gold, "select_by": select_by,
                    "scorer": scorer.model_dump(mode="json") if scorer else None})


@task(name="register-policy", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def register_task(policy: StageOutput, model_name: str, alias: str, algorithm: str, ctx: RunContext) -> str:
    """Register a trained policy (a ppo or dpo stage output) as a version of `model_name` with `alias`, once per
    output (rerunning a cached pipeline does not add versions); the version's `rlhf.stage` and `rlhf.algorithm`
    (e.g. grpo from the ppo stage) tags say which. Returns the version."""
    from tasks.registry import register_policy

    return register_policy(ctx, policy, model_name, alias, algorithm)


def _prefect_report(out: Path, metrics: dict[str, float]) -> None:
    """The evaluation report as Prefect artifacts: the markdown and a metrics table."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from components.evaluation.report import self_contained

    create_markdown_artifact(self_contained(out / "report.md"), key="rlhf-evaluation", description="Evaluation report")
    create_table_artifact([{"metric": k, "value": round(v, 4)} for k, v in sorted(metrics.items())],
                          key="rlhf-evaluation-metrics", description="Evaluation metrics")


@task(name="find-champion", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def champion_task(model_name: str, ctx: RunContext) -> StageOutput | None:
    """The stored policy (ppo or dpo output) behind the registry's `champion` alias, or None when there is none."""
    from tasks.registry import champion_output

    return champion_output(ctx, model_name)


@task(name="gate", cache_policy=NO_CACHE)
def gate_task(evaluation: StageOutput, policies: dict[str, StageOutput], champion: StageOutput | None, metric: str,
              promotion: PromotionConfig) -> dict:
    """Which trained policy is the candidate (the best by `metric` when there are several), and does it beat SFT
    and the champion? A plain decision naming the candidate's `algorithm`; `promote_task` acts on it."""
    from components.evaluation.gate import best_candidate, choice_reason, decide

    metrics = evaluation.metrics
    algorithm = best_candidate(metrics, list(policies), metric)
    why = choice_reason(metrics, list(policies), metric)
    reigning = [a for a, out in policies.items() if champion is not None and out.fingerprint == champion.fingerprint]
    if reigning and reigning[0] == algorithm:
        return {"promote": False, "algorithm": algorithm,
                "reason": "; ".join(filter(None, [why, "the candidate already is the champion"]))}
    if reigning:  # the champion was trained again (cached) beside the candidate: its numbers are that policy's
        metrics = {**metrics, held_out(metric, "champion"): metrics[held_out(metric, reigning[0])]}
    decision = decide(metrics, metric, promotion.margin, promotion.sft_margin,
                      promotion.min_win_rate_vs_sft if promotion.require_beating_sft else None)
    return {"promote": decision.promote, "algorithm": algorithm, "reason": "; ".join(filter(None, [why, decision.reason])),
            "candidate": decision.candidate, "champion": decision.champion,
            "champion_fingerprint": champion.fingerprint if champion else None,  # what the gate compared against
            "metrics": {k: v for k, v in evaluation.metrics.items() if k in KEY_METRICS}}


@task(name="promote", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def promote_task(decision: dict, approved: bool, version: str, model_name: str, metric: str,
                 ctx: RunContext) -> dict:
    """Move `champion` to `version` when the gate said so and (if asked) a person approved; log the decision
    and its numbers on the pipeline run. The alias moves only if it still holds the champion the gate compared
    against: a pipeline that promoted meanwhile is not overruled by numbers measured against its predecessor."""
    from tasks.registry import record_decision, set_alias_if

    promoted = decision["promote"] and approved
    reason = decision["reason"] + ("" if approved or not decision["promote"] else "; not approved")
    if promoted and not set_alias_if(ctx, model_name, "champion", version, decision["champion_fingerprint"]):
        promoted = False
        reason += "; not promoted: another pipeline run moved the champion after this gate compared against it"
    ctx.tracker.tag(ctx.parent_run_id, {"rlhf.promotion": "promoted" if promoted else "kept champion",
                                        "rlhf.promotion.reason": reason})
    numbers = {f"promotion/{k}": float(decision[k]) for k in ("candidate", "champion") if decision.get(k) is not None}
    ctx.tracker.logger(ctx.parent_run_id)(0, {"promotion/promoted": float(promoted), **numbers})
    outcome = {**decision, "promoted": promoted, "reason": reason, "version": version}
    if "candidate" in decision:  # a gate that compared numbers (not "already the champion")
        record_decision(ctx, model_name, version, metric, outcome)
    return outcome
