"""DPO on the demo task: it beats SFT by the gold scorer, resumes exactly, and ZeRO-3 computes what ZeRO-0 does."""
import pytest
import torch
from safetensors.torch import load_file

from components.compute.loop import reproducible
from components.config.loading import load_config
from components.dpo.train import REFERENCE_FILE, run
from components.stage import Hooks, inputs_for


@pytest.fixture(scope="module")
def dpo_run(demo_config, demo_data, sft_run, tmp_path_factory):
    out, logged = tmp_path_factory.mktemp("dpo") / "model", []
    metrics = run(demo_config.dpo, inputs_for("dpo", demo_config, {"data": demo_data.path, "sft": sft_run[0]}), out,
                  Hooks(on_log=lambda step, m: logged.append((step, m))))
    return out, metrics, logged


def test_dpo_beats_sft_by_the_gold_scorer(dpo_run, demo_config, demo_data, sft_run, reward_run, tmp_path):
    from components.evaluation.evaluate import run as evaluate
    from components.evaluation.gold import load_gold
    from components.models.config import ScorerSpec

    out, metrics, logged = dpo_run
    first_eval = next(m for _, m in logged if "dpo/eval/rewards/accuracies" in m)
    # Measured: held-out implicit-reward accuracy 0.70 at step 50 -> 0.76 at the end; eval loss 0.69 -> 0.58.
    assert metrics["dpo/eval/rewards/accuracies"] >= 0.7 and metrics["dpo/eval/loss"] < 0.65
    assert metrics["dpo/eval/rewards/margins"] > first_eval["dpo/eval/rewards/margins"] > 0
    evaluation = evaluate(demo_config.evaluate, demo_data.path, {"dpo": out}, {"sft": sft_run[0]},
                          ScorerSpec(name_or_path=str(reward_run[0])), tmp_path / "eval", demo_config.data.max_length,
                          gold_fn=load_gold(demo_config.gold_fn), select_by="gold_mean")
    # Measured: gold -0.21 (SFT) -> 0.74 (DPO), DPO wins 86.7% of 64 held-out prompts, KL to SFT 1.24 nats.
    assert evaluation["eval/gold_win_rate_vs_sft"] >= 0.75
    assert evaluation["eval/gold_mean"] > evaluation["eval/sft/gold_mean"]
    assert 0 < evaluation["eval/kl_to_ref"] < 10


def _short(tmp_path, demo_data, sft_dir, name, overrides=(), on_log=None, checkpoint_dir=None):
    config = load_config("configs/demo.yaml", ["dpo.max_steps=8", "dpo.log_every=1", "dpo.eval_every=4",
                                               "dpo.checkpoint_every=3", *overrides])
    metrics = run(config.dpo, inputs_for("dpo", config, {"data": demo_data.path, "sft": sft_dir}), tmp_path / name,
                  Hooks(on_log=on_log or (lambda step, m: None), checkpoint_dir=checkpoint_dir))
    return metrics, load_file(str(tmp_path / name / "model.safetensors"))


class Killed(Exception):
    pass


def test_a_resumed_run_ends_as_an_uninterrupted_one(demo_data, sft_run, tmp_path):
    expected, weights = _short(tmp_path, demo_data, sft_run[0], "whole")

    def die_after_step_4(step, metrics):  # a checkpoint was written at step 3
        if step > 4:
            raise Killed
    with pytest.raises(Killed):
        _short(tmp_path, demo_data, sft_run[0], "killed", on_log=die_after_step_4, checkpoint_dir=tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / REFERENCE_FILE).is_file() and (tmp_path / "ckpt" / "latest").read_text() == "step000003"
    steps = []
    resumed, resumed_weights = _short(tmp_path, demo_data, sft_run[0], "resumed", checkpoint_dir=tmp_path / "ckpt",
                                      on_log=lambda step, m: steps.append(step))
    assert steps[0] == 4  # steps 1-3 were not trained again
    assert reproducible(resumed) == pytest.approx(reproducible(expected), rel=1e-6, abs=1e-7)
    assert all(torch.equal(weights[k], resumed_weights[k]) for k in weights)


def test_zero_stage_3_gives_the_first_loss_of_zero_stage_0(demo_data, sft_run, tmp_path):
    def first_loss(stage):
        logged = []
        _short(tmp_path, demo_data, sft_run[0], f"z{stage}", [f"dpo.compute.zero_stage={stage}", "dpo.max_steps=2"],
               on_log=lambda step, m: logged.append(m))
        return [m["dpo/train/loss"] for m in logged if "dpo/train/loss" in m]

    zero0, zero3 = first_loss(0), first_loss(3)
    assert len(zero0) == len(zero3) == 2
    assert zero0[0] == pytest.approx(0.6931, abs=1e-3)  # policy == reference at step 1: -log sigmoid(0)
    assert abs(zero0[0] - zero3[0]) < 1e-6 and abs(zero0[1] - zero3[1]) < 1e-4


def test_feedback_datasets_join_the_training_pairs(demo_data, sft_run, tmp_path):
    from components.feedback.labels import write_dataset

    records = [{"prompt": "Review of Up:", "chosen": " A moving film.", "rejected": " dull dull"}] * 5
    write_dataset(records, {"rows": 5}, "labels.jsonl", tmp_path / "feedback")
    config = load_config("configs/demo.yaml", ["dpo.max_steps=1", "dpo.eval_every=1000"])
    dirs = {"data": demo_data.path, "sft": sft_run[0]}
    plain = run(config.dpo, inputs_for("dpo", config, dirs), tmp_path / "plain", Hooks())
    added = run(config.dpo, inputs_for("dpo", config, dirs, [tmp_path / "feedback"]), tmp_path / "added", Hooks())
    assert added["dpo/data/pairs"] == plain["dpo/data/pairs"] + 5
