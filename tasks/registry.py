"""Register a policy in the MLflow model registry as an `mlflow.transformers` model, with an alias."""
from __future__ import annotations

import tempfile
from importlib.metadata import version

from mlflow.exceptions import MlflowException

from components.io.locks import file_lock, lock_dir
from tasks.output import StageOutput
from tasks.runner import RunContext


def pip_requirements() -> list[str]:
    """Explicit requirements (MLflow would otherwise infer them by importing the model)."""
    return [f"{name}=={version(name)}" for name in ("torch", "transformers", "tokenizers", "safetensors")]


def register_policy(ctx: RunContext, policy: StageOutput, name: str, alias: str, algorithm: str) -> str:
    """Log a trained policy (a ppo or dpo output: a HF directory, fetched from the store only when needed) to its
    stage's run as an mlflow.transformers model and register it under `name` with `alias`; the version's tags name
    the stage (`rlhf.stage`) and the `algorithm` it trained with (`rlhf.algorithm`: ppo, grpo, rloo, reinforce_pp,
    dpo). An output registered before (same run) is not registered again. Returns the version."""
    client, run_id = ctx.tracker.client, policy.mlflow_run_id
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="RLHF policies trained by the rlhf pipeline (PPO or DPO "
                                                         "stage; the version's rlhf.stage and rlhf.algorithm tags say which).")
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        mv = existing[0]
    else:
        import mlflow.transformers  # slow to import: only when a new version is logged
        from transformers import AutoModelForCausalLM, AutoTokenizer

        hf_dir = ctx.store.fetch(policy.stage, policy.cache_key)
        with tempfile.TemporaryDirectory() as tmp:
            model = {"model": AutoModelForCausalLM.from_pretrained(hf_dir, use_safetensors=True), "tokenizer": AutoTokenizer.from_pretrained(hf_dir)}
            mlflow.transformers.save_model(model, f"{tmp}/model", task="text-generation",
                                           pip_requirements=pip_requirements())
            client.log_artifacts(run_id, f"{tmp}/model", "model")
        source = f"{client.get_run(run_id).info.artifact_uri}/model"
        pipeline = ctx.parent_run_id
        # the pipeline run as a markdown link in the description (rendered there), not as run_link: the UI prints a
        # run_link as raw text over the aliases, and "Source Run" already names the training run
        mv = client.create_model_version(name, source, run_id=run_id, description=(
            f"{algorithm.upper()} policy `{policy.uri}` (fingerprint {policy.fingerprint[:12]}), trained by pipeline "
            f"run [{pipeline}]({ctx.tracker.run_url(pipeline)}). The gate's decision and the evaluation's key "
            "metrics are in the rlhf.gate.* and metric.* tags."),
            tags={"rlhf.pipeline_run_id": pipeline, "rlhf.uri": policy.uri, "rlhf.fingerprint": policy.fingerprint,
                  "rlhf.stage": policy.stage, "rlhf.algorithm": algorithm})
        mv = _first_of_run(client, name, run_id, mv)
    client.set_registered_model_alias(name, alias, mv.version)
    ctx.tracker.tag(ctx.parent_run_id, {"rlhf.registered_model": f"{name}/{mv.version}@{alias}"})
    return mv.version


def _first_of_run(client, name: str, run_id: str, mine):
    """Two pipelines registering the same output at once both create a version (the registry has no conditional
    create); each then keeps the lowest version of the run and the other one's is deleted, so one remains."""
    versions = sorted(client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'"),
                      key=lambda v: int(v.version))
    if versions and versions[0].version != mine.version:
        client.delete_model_version(name, mine.version)
        return versions[0]
    return mine


def set_alias_if(ctx: RunContext, name: str, alias: str, version: str, expected_fingerprint: str | None) -> bool:
    """Point `alias` at `version` only if it still holds the output with `expected_fingerprint` (None: no version
    holds it), as the gate saw it; False, and nothing moved, when another pipeline moved it since. MLflow has no
    compare-and-set: the check and the move run under a lock on this machine."""
    client = ctx.tracker.client
    with file_lock(lock_dir(ctx.store.root) / f"alias-{name}-{alias}.lock", f"the {alias} alias of {name}"):
        try:
            current = client.get_model_version_by_alias(name, alias).tags.get("rlhf.fingerprint")
        except MlflowException:
            current = None
        if current != expected_fingerprint:
            return False
        client.set_registered_model_alias(name, alias, version)
        return True


def record_decision(ctx: RunContext, name: str, version: str, metric: str, decision: dict) -> None:
    """The gate's metric, numbers and decision on the model version itself (its tags in the registry UI)."""
    tags = {"rlhf.gate.metric": metric, "rlhf.gate.decision": "promoted" if decision["promoted"] else "kept champion",
            "rlhf.gate.reason": decision["reason"][:5000], "rlhf.gate.pipeline_run_id": ctx.parent_run_id,
            **{f"rlhf.gate.{k}": f"{decision[k]:.4g}" for k in ("candidate", "champion") if decision.get(k) is not None},
            **{f"metric.{k}": f"{v:.4g}" for k, v in decision.get("metrics", {}).items()}}
    for key, value in tags.items():
        ctx.tracker.client.set_model_version_tag(name, version, key, value)


def champion_output(ctx: RunContext, name: str) -> StageOutput | None:
    """The StageOutput of the version holding `champion` (from its rlhf.uri tag), or None."""
    from tasks.runner import load_output

    try:
        version = ctx.tracker.client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        return None
    return load_output(ctx.store, version.tags["rlhf.uri"])
