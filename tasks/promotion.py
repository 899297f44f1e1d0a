"""The registry and promotion tasks: find the champion, gate the candidate, register it, promote it."""
from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from components.evaluation.config import PromotionConfig
from components.evaluation.metrics import held_out
from tasks.output import StageOutput
from tasks.runner import RunContext
from tasks.tracking import KEY_METRICS


@task(name="register-policy", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def register_task(policy: StageOutput, model_name: str, alias: str, algorithm: str, ctx: RunContext) -> str:
    """Register a trained policy (a ppo or dpo stage output) as a version of `model_name` with `alias`, once per
    output (rerunning a cached pipeline does not add versions); the version's `rlhf.stage` and `rlhf.algorithm`
    (e.g. grpo from the ppo stage) tags say which. Returns the version."""
    from tasks.registry import register_policy

    return register_policy(ctx, policy, model_name, alias, algorithm)


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
