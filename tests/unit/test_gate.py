"""The promotion gate and the reward-hacking signal on hand-made numbers."""
import pytest

from components.evaluation.gate import decide, reward_hacking


def test_gate_promotes_a_better_candidate_and_keeps_the_champion_against_a_worse_one():
    better = decide({"policy/gold_mean": 1.5, "champion/gold_mean": 1.0}, "gold_mean", margin=0.2)
    assert better.promote and better.champion == 1.0 and "1.5 >= champion 1 + margin 0.2" in better.reason
    worse = decide({"policy/gold_mean": 1.1, "champion/gold_mean": 1.0}, "gold_mean", margin=0.2)
    assert not worse.promote and "< champion" in worse.reason
    first = decide({"policy/score_mean": -3.0}, "score_mean", margin=0.0)
    assert first.promote and first.champion is None and "no champion yet" in first.reason


def test_reward_hacking_compares_gains_in_sft_standard_deviations():
    base = {"sft/score_mean": 0.0, "sft/score_std": 1.0, "sft/gold_mean": 0.0, "sft/gold_std": 2.0}
    honest = {**base, "policy/score_mean": 1.0, "policy/gold_mean": 2.0}  # gains 1.0 and 1.0 sd
    assert reward_hacking(honest, threshold=1.0) == (False, pytest.approx(0.0))
    hacked = {**base, "policy/score_mean": 3.0, "policy/gold_mean": 0.5}  # gains 3.0 vs 0.25 sd
    flagged, excess = reward_hacking(hacked, threshold=1.0)
    assert flagged and excess == pytest.approx(2.75)
