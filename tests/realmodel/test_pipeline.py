"""Every stage on SmolLM2-135M-Instruct through the real pipeline flow (a few steps each): chat data with the
model's own template, LoRA SFT and reward model, LoRA PPO scored at the right token, LoRA DPO beside it, evaluation
of both with the same scorer, the gate judged against SFT, registration. Prefect test harness, MLflow on sqlite."""
from __future__ import annotations

import json

import pytest
import torch

from components.config.loading import load_config

FEW_STEPS = ["data.demo.n_sft_train=32", "data.demo.n_sft_eval=4", "data.demo.n_pref_train=32",
             "data.demo.n_pref_eval=8", "data.demo.n_eval_prompts=4",
             "sft.max_steps=2", "sft.compute.micro_batch_size=4", "sft.eval_every=2",
             "reward.max_steps=2", "reward.compute.micro_batch_size=4", "reward.eval_every=2",
             "ppo.iterations=2", "ppo.batch_size=4", "ppo.num_minibatches=2", "ppo.ppo_epochs=1",
             "ppo.compute.micro_batch_size=2", "ppo.rollout.max_new_tokens=8", "ppo.eval_every=2",
             "ppo.eval_samples=1", "ppo.compute.gradient_checkpointing=true",
             "dpo.max_steps=2", "dpo.compute.micro_batch_size=4", "dpo.eval_every=2", "dpo.log_every=1", "policies=[ppo, dpo]",
             "evaluate.samples_per_prompt=1", "evaluate.rollout.max_new_tokens=8"]


@pytest.fixture(scope="module")
def outputs(smollm2, tmp_path_factory):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import rlhf_pipeline

    state = tmp_path_factory.mktemp("smollm2")
    config = load_config("configs/smollm2.yaml", [
        f"data.demo.tokenizer={smollm2}", f"sft.model.name_or_path={smollm2}", f"state_dir={state}",
        f"output_dir={state}/artifacts", *FEW_STEPS])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{state}/mlflow.db")
        with prefect_test_harness(server_startup_timeout=120):
            return rlhf_pipeline(config), state


def test_every_stage_runs_on_the_real_model(outputs, smol_tokenizer):
    from transformers import AutoConfig

    out, _ = outputs
    assert [name for name, o in out.items() if not o.cached] == ["data", "sft", "reward", "ppo", "dpo", "evaluate"]
    for stage in ("sft", "reward", "ppo", "dpo", "evaluate"):
        assert out[stage].metrics[f"{stage}/peak_rss_mb"] > 300  # a 135M model is loaded: measured, not zero
    for stage in ("sft", "ppo", "dpo"):  # merged LoRA: plain llama dirs with the vocabulary untouched
        config = AutoConfig.from_pretrained(out[stage].uri)
        assert config.model_type == "llama" and config.vocab_size == len(smol_tokenizer) == 49152
    rm = AutoConfig.from_pretrained(out["reward"].uri)
    assert rm.architectures == ["LlamaForSequenceClassification"] and rm.num_labels == 1
    metrics = out["evaluate"].metrics
    for key in ("eval/gold_mean", "eval/sft/gold_mean", "eval/score_mean", "eval/gold_win_rate_vs_sft",
                "eval/kl_to_ref", "eval/ppo/gold_win_rate_vs_dpo", "eval/dpo/kl_to_ref"):
        assert key in metrics

def test_dpo_starts_at_its_reference(outputs):
    """Before DPO's first update the LoRA policy (adapters at zero) is exactly the SFT model whose log-probs were
    stored as the reference: the first loss is log 2 and both implicit rewards are zero."""
    import math

    from tasks.tracking import Tracker

    out, state = outputs
    client = Tracker(f"sqlite:///{state}/mlflow.db", "rlhf-smollm2").client
    first = {key: client.get_metric_history(out["dpo"].mlflow_run_id, f"dpo/train/{key}")[0]
             for key in ("loss", "rewards/chosen", "rewards/rejected")}
    assert first["loss"].step == 1 and first["loss"].value == pytest.approx(math.log(2), abs=1e-4)
    assert first["rewards/chosen"].value == pytest.approx(0, abs=1e-4)
    assert first["rewards/rejected"].value == pytest.approx(0, abs=1e-4)


def test_the_gate_judges_against_sft(outputs):
    from tasks.tracking import Tracker

    out, state = outputs
    tracker = Tracker(f"sqlite:///{state}/mlflow.db", "rlhf-smollm2")
    (parent,) = tracker.client.search_runs([tracker.experiment_id], "tags.`rlhf.kind` = 'pipeline'")
    reason = parent.data.tags["rlhf.promotion.reason"]
    assert "SFT" in reason  # beats SFT, or does not: either way the decision says how it compared
    m = out["evaluate"].metrics
    promoted = parent.data.tags["rlhf.promotion"] == "promoted"
    assert promoted == (m["eval/gold_mean"] > m["eval/sft/gold_mean"] and m["eval/gold_win_rate_vs_sft"] >= 0.5)


def test_ppo_samples_end_at_eos_and_are_scored_there(outputs):
    """The policy's samples are decoded without the template's tokens; history logs the scorer's numbers."""
    out, _ = outputs
    from pathlib import Path

    rows = [json.loads(line) for line in (Path(out["ppo"].uri) / "eval_samples.jsonl").read_text().splitlines()]
    assert rows and all("<|im_end|>" not in r["response"] and "<|im_start|>" not in r["response"] for r in rows)
    assert all(isinstance(r["score"], float) for r in rows)


def test_grpo_on_the_real_model_with_weighted_rewards(outputs, smol_tokenizer, tmp_path):
    """GRPO from the pipeline's SmolLM2 SFT model (LoRA, pad == EOS, chat template), rewarded by the reward model
    plus a Python function at half weight: no value head, each term logged, the reward their weighted sum."""
    from transformers import AutoConfig

    from components.ppo import run
    from components.stage import Hooks, inputs_for

    out, state = outputs
    config = load_config("configs/smollm2.yaml", [
        *FEW_STEPS, "ppo.advantage=grpo", "ppo.num_generations=2", "ppo.batch_size=2",
        "ppo.rewards=[{weight: 1.0}, {function: 'components.data.gold:gold_scores', weight: 0.5, name: gold}]"])
    logged = []
    assert config.gold_fn == "components.data.gold:gold_scores"  # held-out samples are scored by it
    metrics = run(config.ppo, inputs_for("ppo", config, {s: out[s].uri for s in ("data", "sft", "reward")}),
                  tmp_path / "grpo", Hooks(on_log=lambda step, m: logged.append(m)))
    stats = [m for m in logged if "loss/policy_avg" in m]
    assert len(stats) == 2
    for m in stats:
        assert m["objective/scores"] == pytest.approx(m["rewards/reward_model/mean"] + 0.5 * m["rewards/gold/mean"],
                                                      abs=1e-4)
        assert "loss/value_avg" not in m and 0.0 <= m["frac_reward_zero_std"] <= 1.0
    assert "eval/gold_mean" in metrics and "eval/kl_to_ref" in metrics
    saved = AutoConfig.from_pretrained(tmp_path / "grpo")
    assert saved.model_type == "llama" and saved.vocab_size == len(smol_tokenizer)


def test_es_on_the_real_model_perturbs_lora_adapters(outputs, smol_tokenizer, tmp_path):
    """ES from the pipeline's SmolLM2 SFT model with LoRA (configs/smollm2.yaml's es section, a few members):
    forward passes only, the reward model scoring each member, the merged policy saved as a llama dir."""
    from transformers import AutoConfig

    from components.es import run
    from components.stage import Hooks, inputs_for

    out, _ = outputs
    config = load_config("configs/smollm2.yaml", [*FEW_STEPS, "es.iterations=2", "es.population_size=2",
                                                  "es.batch_size=2", "es.rollout.max_new_tokens=8", "es.eval_every=2"])
    logged = []
    metrics = run(config.es, inputs_for("es", config, {s: out[s].uri for s in ("data", "sft", "reward")}),
                  tmp_path / "es", Hooks(on_log=lambda step, m: logged.append(m)))
    assert [m["es/reward_mean"] == m["rewards/reward_model/mean"] for m in logged if "es/reward_mean" in m] == [True] * 2
    assert "eval/gold_mean" in metrics and "eval/initial/gold_mean" in metrics
    saved = AutoConfig.from_pretrained(tmp_path / "es")
    assert saved.model_type == "llama" and saved.vocab_size == len(smol_tokenizer)


def test_full_fine_tune_ppo_in_bf16_true_on_the_real_model(outputs, tmp_path):
    """compute.precision bf16-true on SmolLM2 without LoRA: policy, reference and reward model held in bf16,
    the first rollout's KL to the reference exactly 0, every update finite, the weights
    moved at a full fine-tune's learning rate (stochastic rounding), and the saved policy loads as a llama dir."""
    from safetensors.torch import load_file

    from components.ppo import run
    from components.stage import Hooks, inputs_for

    out, _ = outputs
    config = load_config("configs/smollm2.yaml", [*FEW_STEPS, "ppo.lora=null", "ppo.lr=1e-5",
                                                  "ppo.compute.precision=bf16-true"])
    logged = []
    run(config.ppo, inputs_for("ppo", config, {s: out[s].uri for s in ("data", "sft", "reward")}), tmp_path / "ppo",
        Hooks(on_log=lambda step, m: logged.append(m)))
    stats = [m for m in logged if "loss/policy_avg" in m]
    assert len(stats) == 2 and stats[0]["objective/kl"] == 0.0
    assert all(torch.isfinite(torch.tensor(list(m.values()))).all() for m in stats)
    sft, ppo = load_file(f"{out['sft'].uri}/model.safetensors"), load_file(str(tmp_path / "ppo" / "model.safetensors"))
    assert ppo["model.layers.0.mlp.down_proj.weight"].dtype == torch.bfloat16
    moved = [k for k in sft if not torch.equal(sft[k].to(torch.bfloat16), ppo[k])]
    assert len(moved) > 0.9 * len(sft), len(moved)
