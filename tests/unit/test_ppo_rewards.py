"""Rewards, KL controllers, the PPO config and win-rate: plain data in, exact numbers out."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from components.evaluation.metrics import per_prompt_means, win_rate
from components.ppo.config import PPOConfig
from components.ppo.kl import AdaptiveKLController, FixedKLController, from_state
from components.errors import ConfigError
from components.ppo.shaping import RunningMoments, shape_scores, token_rewards
from components.rl.generation import _response_mask
from components.rl.rewards import RewardError, RewardTerm, check_scores, combine_scores, reward_terms


def test_adaptive_kl_moves_beta_towards_the_target_and_clips_the_step():
    ctl = AdaptiveKLController(value=0.1, target=6.0, horizon=1000)
    ctl.update(current_kl=9.0, n_steps=100)  # error = clip(0.5) = 0.2 -> beta * 1.02
    assert ctl.value == pytest.approx(0.102)
    ctl.update(current_kl=3.0, n_steps=100)  # error = -0.5 -> -0.2 -> * 0.98
    assert ctl.value == pytest.approx(0.102 * 0.98)
    restored = from_state(ctl.state_dict())
    assert restored == ctl and isinstance(restored, AdaptiveKLController)
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 100)
    assert from_state(fixed.state_dict()) == FixedKLController(0.05)


def test_token_rewards_put_the_score_on_the_last_real_token():
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    logp, ref = torch.full((2, 4), -1.0), torch.full((2, 4), -1.5)
    rewards, kl = token_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, kl_coef=0.1, estimator="k1",
                                kl_in_reward=True)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, -0.05, 1.95, 0.0], [-1.05, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(kl, 0.5 * mask)
    no_kl, _ = token_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, 0.1, "k1", kl_in_reward=False)
    torch.testing.assert_close(no_kl, torch.tensor([[0.0, 0.0, 2.0, 0.0], [-1.0, 0.0, 0.0, 0.0]]))


def test_check_scores_rejects_wrong_counts_and_nonfinite_values():
    with pytest.raises(RewardError, match="returned 2 scores for 3 responses"):
        check_scores([1.0, 2.0], 3, "error")
    with pytest.raises(RewardError, match="NaN or inf for 1 of 3 responses \\(first at index 1\\)"):
        check_scores([1.0, float("nan"), 2.0], 3, "error")
    with pytest.raises(RewardError, match="not numbers"):
        check_scores(["a", "b"], 2, "error")
    scores, keep = check_scores([1.0, float("inf"), 2.0], 3, "skip")
    assert keep.tolist() == [True, False, True] and scores.tolist() == [1.0, 0.0, 2.0]


def test_running_moments_match_numpy_over_all_batches():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=n) for n in (5, 17, 9)]
    m = RunningMoments()
    for b in batches:
        m.update(torch.tensor(b, dtype=torch.float64))
    everything = np.concatenate(batches)
    assert m.mean == pytest.approx(everything.mean(), rel=1e-4)
    assert m.std == pytest.approx(everything.std(), rel=1e-3)


def test_shape_scores_penalises_missing_eos_then_clips():
    keep = torch.tensor([True, True, False])
    out = shape_scores(torch.tensor([5.0, 1.0, 0.0]), keep, torch.tensor([True, False, True]),
                       missing_eos_penalty=2.0, moments=None, clip=3.0)
    torch.testing.assert_close(out, torch.tensor([3.0, -1.0, 0.0]))


def test_response_mask_ends_at_the_first_eos():
    tokens = torch.tensor([[5, 6, 1, 0, 0], [5, 1, 7, 1, 0], [5, 6, 7, 8, 9]])
    mask, has_eos = _response_mask(tokens, eos_id=1, stop_at_eos=True)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert has_eos.tolist() == [True, True, False]
    full, _ = _response_mask(tokens, eos_id=1, stop_at_eos=False)
    assert full.all()


def test_win_rate_counts_ties_as_half():
    rows = [{"prompt_index": 0, "gold": 1.0}, {"prompt_index": 0, "gold": 3.0}, {"prompt_index": 1, "gold": 0.0}]
    assert per_prompt_means(rows, "gold") == {0: 2.0, 1: 0.0}
    assert win_rate({0: 2.0, 1: 0.0, 2: 5.0}, {0: 1.0, 1: 0.0, 2: 6.0}) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no prompt"):
        win_rate({0: 1.0}, {1: 1.0})


@pytest.mark.parametrize("override, message", [
    ({"batch_size": 30}, "not divisible by num_minibatches"),
    ({"compute": {"micro_batch_size": 3}}, "not divisible by compute.micro_batch_size"),
    ({"compute": {"micro_batch_size": 8, "gradient_accumulation_steps": 2}}, "leave it at 1"),
    ({"critic_model": {"name_or_path": "x"}}, "set critic: separate"),
    ({"rollout": {"temperature": -1}}, "greater than or equal to 0"),
])
def test_invalid_ppo_configs_fail_at_validation(override, message):
    with pytest.raises(ValidationError, match=message):
        PPOConfig(**override)


def test_distinct_n_counts_unique_ngrams_over_all_responses():
    from components.evaluation.metrics import distinct_n

    texts = ["a b a b", "a b c"]  # unigrams: a b a b a b c (7, 3 unique); bigrams: ab ba ab ab bc (5, 3 unique)
    assert distinct_n(texts, 1) == pytest.approx(3 / 7)
    assert distinct_n(texts, 2) == pytest.approx(3 / 5)
    assert distinct_n(["a"], 2) == 0.0


def _length(prompts, responses):
    return [float(len(r)) for r in responses]


def test_reward_terms_are_weighted_summed_and_checked_each_by_name():
    terms = [RewardTerm("gold", 1.0), RewardTerm("length", -0.5), RewardTerm("reward_model", 2.0)]
    scores, per_term, keep = combine_scores([[1.0, 2.0], [4.0, 2.0], [0.5, float("nan")]], terms, 2, "skip")
    torch.testing.assert_close(scores, torch.tensor([1.0 - 2.0 + 1.0, 0.0]))  # the NaN row is dropped whole
    torch.testing.assert_close(per_term, torch.tensor([[1.0, 4.0, 0.5], [0.0, 0.0, 0.0]]))
    assert keep.tolist() == [True, False]
    with pytest.raises(RewardError, match="^length returned 1 scores for 2 responses"):
        combine_scores([[1.0, 2.0], [4.0], [0.5, 1.0]], terms, 2, "error")
    with pytest.raises(RewardError, match="^reward_model: reward is NaN"):
        combine_scores([[1.0, 2.0], [4.0, 2.0], [0.5, float("nan")]], terms, 2, "error")


def test_reward_terms_come_from_the_api_or_from_ppo_rewards():
    from components.data.gold import gold_scores
    config = PPOConfig(rewards=[{"function": "components.data.gold:gold_scores", "weight": 0.5},
                                {"weight": 2.0, "name": "rm"}])
    assert reward_terms(config.rewards, None, None, has_model=True) == [
        RewardTerm("gold_scores", 0.5, gold_scores), RewardTerm("rm", 2.0)]
    with pytest.raises(ConfigError, match="a term is the reward model, but no reward model was given"):
        reward_terms(config.rewards, None, None, has_model=False)
    # the trlx-style API: functions (weighted) and a given reward model, which keeps ppo.rewards' weight for it
    assert reward_terms(config.rewards, [gold_scores, _length], [1.0, 0.1], has_model=True) == [
        RewardTerm("gold_scores", 1.0, gold_scores), RewardTerm("_length", 0.1, _length), RewardTerm("reward_model", 2.0)]
    assert reward_terms(PPOConfig().rewards, gold_scores, None, has_model=False) == [
        RewardTerm("gold_scores", 1.0, gold_scores)]
    with pytest.raises(ConfigError, match="2 weights for 1 reward functions"):
        reward_terms(config.rewards, [gold_scores], [1.0, 2.0], has_model=False)
    with pytest.raises(ConfigError, match="share a name"):
        reward_terms(config.rewards, [gold_scores, gold_scores], None, has_model=False)


def test_ppo_rewards_config_errors_name_the_field():
    with pytest.raises(ValidationError, match=r"rewards\.0\.function\n.*cannot import module 'nope'"):
        PPOConfig(rewards=[{"function": "nope:reward"}])
    with pytest.raises(ValidationError, match="not of the form module:function"):
        PPOConfig(rewards=[{"function": "components.data.gold"}])
    with pytest.raises(ValidationError, match="named alike"):
        PPOConfig(rewards=[{"function": "components.data.gold:gold_scores"}, {"name": "gold_scores"}])
    with pytest.raises(ValidationError, match="reward model is listed twice"):
        PPOConfig(rewards=[{}, {"name": "again"}])
    with pytest.raises(ValidationError, match="reward_model is set but no entry of rewards uses it"):
        PPOConfig(reward_model={"name_or_path": "some/rm"}, rewards=[{"function": "components.data.gold:gold_scores"}])
    with pytest.raises(ValidationError, match="would split groups of num_generations=4"):
        PPOConfig(advantage="grpo", num_generations=4, batch_size=6, num_minibatches=4)
