"""GRPO and RLOO in the RL engine (no critic), from the demo SFT model: scored by the reward model, or by a Python
reward function (the verifiable-reward setting), they must raise the independent gold score over SFT."""
from __future__ import annotations

import pytest

from components.data.gold import gold_scores
from components.data.prepare import load_data_tokenizer, read_split
from components.ppo import run, train
from components.stage import Hooks, inputs_for


def _critic_free(demo_config, **update):
    return demo_config.ppo.model_validate({**demo_config.ppo.model_dump(), "batch_size": 8, "num_generations": 4,
                                           **update})  # 8 prompts x 4 samples: PPO's 32 samples per iteration


def _learned(m, kl_bound=20.0):
    assert m["eval/gold_win_rate_vs_initial"] >= 0.75, m
    assert m["eval/gold_mean"] > m["eval/initial/gold_mean"] + 0.5, m
    assert 0.0 < m["eval/kl_to_ref"] < kl_bound, m


def test_grpo_with_the_reward_model_beats_sft_by_gold(demo_config, demo_data, sft_run, reward_run, tmp_path):
    config = _critic_free(demo_config, advantage="grpo", loss_aggregation="sequence_mean")
    logged = []
    dirs = {"data": demo_data.path, "sft": sft_run[0], "reward": reward_run[0]}  # the demo's gold scorer: gold_scores
    metrics = run(config, inputs_for("ppo", demo_config, dirs), tmp_path / "grpo",
                  Hooks(on_log=lambda step, m: logged.append(m)))
    _learned(metrics)
    stats = [m for m in logged if "loss/policy_avg" in m]
    assert all("loss/value_avg" not in m and 0.0 <= m["frac_reward_zero_std"] <= 1.0 for m in stats)
    assert (tmp_path / "grpo" / "model.safetensors").is_file()


def finished(prompts: list[str], responses: list[str]) -> list[float]:
    """A verifiable format reward: 1 for a response that ends a sentence."""
    return [float(r.rstrip().endswith((".", "!"))) for r in responses]


def test_rloo_with_weighted_python_rewards_and_no_reference_beats_sft_by_gold(demo_config, demo_data, sft_run):
    from components.models.config import ModelSpec
    from components.ppo.api import build_models

    prompts = list(dict.fromkeys(r["prompt"] for r in read_split(demo_data.path, "preference_train")))
    held_out = [r["prompt"] for r in read_split(demo_data.path, "eval_prompts")]
    config = _critic_free(demo_config, advantage="rloo", kl={"coef": 0.0})
    logged = []
    result = train(prompts, reward_fn=[gold_scores, finished], reward_weights=[1.0, 0.5], config=config,
                   model=str(sft_run[0]), eval_prompts=held_out, gold_fn=gold_scores,
                   hooks=Hooks(on_log=lambda step, m: logged.append(m)))
    m = result.metrics
    assert m["eval/gold_win_rate_vs_initial"] >= 0.75, m
    assert m["eval/gold_mean"] > m["eval/initial/gold_mean"] + 0.5, m
    stats = [s for s in logged if "loss/policy_avg" in s]
    assert len(stats) == config.iterations
    for s in stats:  # each term logged, and the reward trained on is their weighted sum
        assert s["objective/scores"] == pytest.approx(s["rewards/gold_scores/mean"] + 0.5 * s["rewards/finished/mean"],
                                                      abs=1e-5)
    # kl.coef 0: no reference is loaded, and no KL is reported against one that does not exist
    assert not any(k.endswith(("objective/kl", "kl_to_ref")) for s in logged for k in s)
    tok = load_data_tokenizer(demo_data.path)
    assert build_models(config, tok, ModelSpec(name_or_path=str(sft_run[0])), None).reference is None
    assert build_models(config.model_copy(update={"kl": config.kl.model_copy(update={"coef": 0.05})}), tok,
                        ModelSpec(name_or_path=str(sft_run[0])), None).reference is not None


def test_estimators_that_compare_samples_need_a_group(demo_config):
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        demo_config.ppo.model_validate({**demo_config.ppo.model_dump(), "advantage": "grpo"})
    with pytest.raises(ValueError, match="trains no critic"):
        demo_config.ppo.model_validate({**demo_config.ppo.model_dump(), "advantage": "rloo", "num_generations": 2,
                                        "critic": "separate"})
