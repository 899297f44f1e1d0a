"""The promotion gate and the reward-hacking signal on hand-made numbers."""
import pytest

from components.evaluation.gate import decide, reward_hacking


def test_gate_promotes_a_better_candidate_and_keeps_the_champion_against_a_worse_one():
    better = decide({"eval/gold_mean": 1.5, "eval/champion/gold_mean": 1.0}, "gold_mean", margin=0.2)
    assert better.promote and better.champion == 1.0 and "1.5 >= champion 1 + margin 0.2" in better.reason
    worse = decide({"eval/gold_mean": 1.1, "eval/champion/gold_mean": 1.0}, "gold_mean", margin=0.2)
    assert not worse.promote and "< champion" in worse.reason
    first = decide({"eval/score_mean": -3.0}, "score_mean", margin=0.0)
    assert first.promote and first.champion is None and "no champion yet" in first.reason


def test_reward_hacking_compares_gains_in_sft_standard_deviations():
    base = {"eval/sft/score_mean": 0.0, "eval/sft/score_std": 1.0, "eval/sft/gold_mean": 0.0, "eval/sft/gold_std": 2.0}
    honest = {**base, "eval/score_mean": 1.0, "eval/gold_mean": 2.0}  # gains 1.0 and 1.0 sd
    assert reward_hacking(honest, threshold=1.0) == (False, pytest.approx(0.0))
    hacked = {**base, "eval/score_mean": 3.0, "eval/gold_mean": 0.5}  # gains 3.0 vs 0.25 sd
    flagged, excess = reward_hacking(hacked, threshold=1.0)
    assert flagged and excess == pytest.approx(2.75)


def test_gate_never_promotes_a_policy_that_loses_to_sft_even_without_a_champion():
    """A 25% win-rate against SFT was once promoted because there was no champion yet."""
    worse = {"eval/gold_mean": 0.1, "eval/sft/gold_mean": 0.4, "eval/gold_win_rate_vs_sft": 0.25}
    decision = decide(worse, "gold_mean", margin=0.0)
    assert not decision.promote and "does not beat SFT" in decision.reason
    mostly_losing = {"eval/gold_mean": 0.5, "eval/sft/gold_mean": 0.4, "eval/gold_win_rate_vs_sft": 0.3}
    decision = decide(mostly_losing, "gold_mean", margin=0.0, min_win_rate_vs_sft=0.5)
    assert not decision.promote and "wins 30% of prompts against SFT" in decision.reason
    better = {"eval/gold_mean": 1.0, "eval/sft/gold_mean": 0.4, "eval/gold_win_rate_vs_sft": 0.8}
    decision = decide(better, "gold_mean", margin=0.0)
    assert decision.promote and "beats SFT" in decision.reason and "no champion yet" in decision.reason
    assert not decide(better, "gold_mean", margin=0.0, sft_margin=1.0).promote
    skipped = decide(worse, "gold_mean", margin=0.0, min_win_rate_vs_sft=None)  # require_beating_sft: false
    assert skipped.promote and "not compared with SFT" in skipped.reason
