"""2 processes under torchrun (gloo, CPU) against 1 process with the same global batch."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from components.compute.net import free_port

ROOT = Path(__file__).parents[2]
# No dropout: each rank draws its own masks, so with dropout 2 ranks and 1 rank differ by design.
STEPS = ["sft.max_steps=4", "sft.log_every=1", "sft.eval_every=2", "sft.compute.zero_stage=3",
         "sft.model.arch.dropout=0.0"]


def launch(nproc: int, extra: list[str], data: Path, out: Path, stage: str = "sft") -> tuple[str, list[dict]]:
    metrics = out.with_suffix(".jsonl")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "tasks.launchers.rank", stage,
           "--config", "configs/demo.yaml", "--input", f"data={data}", "--out", str(out), "--metrics", str(metrics)]
    for item in (STEPS if stage == "sft" else []) + extra:
        cmd += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # take the ranks down with the launcher
        raise
    assert proc.returncode == 0, output[-6000:]
    return output, [json.loads(line) for line in metrics.read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from components.config.loading import load_config
    from components.data.prepare import prepare

    config = load_config("configs/demo.yaml", ["data.demo.n_sft_train=256", "data.demo.n_sft_eval=64"])
    return prepare(config.data, tmp_path_factory.mktemp("mr") / "data").path


def test_two_ranks_complete_log_once_and_match_one_rank(tiny_data, tmp_path):
    out2, logged2 = launch(2, ["sft.compute.micro_batch_size=8"], tiny_data, tmp_path / "two")
    out1, logged1 = launch(1, ["sft.compute.micro_batch_size=8", "sft.compute.gradient_accumulation_steps=2"],
                           tiny_data, tmp_path / "one")
    # Only rank 0 logs: one metrics line per event, no rank-1 progress lines.
    train_steps = [m["step"] for m in logged2 if "sft/train/loss" in m]
    assert train_steps == [1, 2, 3, 4]
    assert [m["step"] for m in logged2 if "sft/eval/loss" in m] == [2, 4]
    assert "[rank 0] sft step 4/4" in out2 and "[rank 1] sft step" not in out2
    assert (tmp_path / "two" / "model.safetensors").is_file()
    # 2 ranks x 8 examples and 1 rank x 2 micro batches of 8 take the same optimizer steps.
    evals2 = [m["sft/eval/loss"] for m in logged2 if "sft/eval/loss" in m]
    evals1 = [m["sft/eval/loss"] for m in logged1 if "sft/eval/loss" in m]
    assert evals2 == pytest.approx(evals1, abs=1e-4)


def test_bf16_true_two_ranks_match_one_rank(tiny_data, tmp_path):
    """compute.precision bf16-true under ZeRO-0 on 2 ranks: DeepSpeed all-reduces the bf16 gradients over gloo and
    our optimizer steps them (the same rounding bits on every rank); the same steps as 1 rank accumulating 2 micro
    batches."""
    import torch
    from safetensors.torch import load_file

    common = ["sft.compute.micro_batch_size=8", "sft.compute.zero_stage=0", "sft.compute.precision=bf16-true"]
    _, logged2 = launch(2, common, tiny_data, tmp_path / "two")
    _, logged1 = launch(1, [*common, "sft.compute.gradient_accumulation_steps=2"], tiny_data, tmp_path / "one")
    evals2 = [m["sft/eval/loss"] for m in logged2 if "sft/eval/loss" in m]
    evals1 = [m["sft/eval/loss"] for m in logged1 if "sft/eval/loss" in m]
    assert len(evals2) == 2 and evals2 == pytest.approx(evals1, abs=1e-3)  # measured: equal
    assert evals2[1] < evals2[0]  # it trains
    weights = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.bfloat16}


# PPO from randomly initialised policy and reward models (no upstream stages needed), greedy decoding so that
# sampling does not depend on how prompts are split over ranks.
ARCH = "{arch: {type: gpt2, n_layer: 2, hidden_size: 64, n_head: 4, max_positions: 128, dropout: 0.0}}"
PPO = [f"ppo.model={ARCH}", f"ppo.reward_model={ARCH}", "ppo.compute.zero_stage=3", "ppo.iterations=2",
       "ppo.batch_size=8", "ppo.num_minibatches=2", "ppo.ppo_epochs=2", "ppo.compute.micro_batch_size=2",
       "ppo.rollout.temperature=0", "ppo.rollout.max_new_tokens=8", "ppo.eval_every=2", "ppo.lr=1e-3"]


def test_ppo_zero3_two_ranks_match_one_rank(tiny_data, tmp_path):
    out2, logged2 = launch(2, PPO, tiny_data, tmp_path / "two", stage="ppo")
    _, logged1 = launch(1, PPO, tiny_data, tmp_path / "one", stage="ppo")
    assert "[rank 0] ppo iteration 2/2" in out2 and "[rank 1] ppo iteration" not in out2
    assert (tmp_path / "two" / "model.safetensors").is_file()
    iters2 = [m for m in logged2 if "loss/policy_avg" in m]
    iters1 = [m for m in logged1 if "loss/policy_avg" in m]
    assert [m["step"] for m in iters2] == [1, 2]
    for a, b in zip(iters1, iters2):
        for key in ("loss/policy_avg", "loss/value_avg", "objective/scores", "objective/kl", "policy/entropy_avg"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)
    evals = [[m["eval/score_mean"] for m in logged if "eval/score_mean" in m] for logged in (logged1, logged2)]
    assert len(evals[0]) == 2 and evals[1] == pytest.approx(evals[0], abs=1e-4)


DPO = [f"dpo.model={ARCH}", "dpo.compute.zero_stage=3", "dpo.max_steps=3", "dpo.log_every=1", "dpo.eval_every=3",
       "dpo.lr=1e-3", "dpo.warmup_steps=0"]


def test_dpo_zero3_two_ranks_match_one_rank(tiny_data, tmp_path):
    out2, logged2 = launch(2, DPO + ["dpo.compute.micro_batch_size=4"], tiny_data, tmp_path / "two", stage="dpo")
    _, logged1 = launch(1, DPO + ["dpo.compute.micro_batch_size=4", "dpo.compute.gradient_accumulation_steps=2"],
                        tiny_data, tmp_path / "one", stage="dpo")
    assert "[rank 0] dpo step 3/3" in out2 and "[rank 1] dpo step" not in out2
    steps = [[m for m in logged if "dpo/train/loss" in m] for logged in (logged1, logged2)]
    assert [m["step"] for m in steps[1]] == [1, 2, 3]
    assert steps[0][0]["dpo/train/loss"] == pytest.approx(0.6931, abs=1e-4)  # the policy is its own reference
    for a, b in zip(*steps):
        for key in ("dpo/train/loss", "dpo/train/rewards/margins", "dpo/train/rewards/accuracies"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)
    evals = [[m["dpo/eval/loss"] for m in logged if "dpo/eval/loss" in m] for logged in (logged1, logged2)]
    assert len(evals[0]) == 1 and evals[1] == pytest.approx(evals[0], abs=1e-4)


def test_grpo_groups_hold_one_prompt_each_across_two_ranks(tiny_data, tmp_path):
    """Greedy decoding makes a group's samples identical, so every group's rewards have zero spread exactly when
    the group ids put each prompt's samples together after the 2-rank all-gather (a group mixing prompts scores
    them differently under the random reward model)."""
    grpo = PPO + ["ppo.advantage=grpo", "ppo.num_generations=2"]
    _, logged2 = launch(2, grpo, tiny_data, tmp_path / "two", stage="ppo")
    _, logged1 = launch(1, grpo, tiny_data, tmp_path / "one", stage="ppo")
    iters = [[m for m in logged if "frac_reward_zero_std" in m] for logged in (logged1, logged2)]
    assert [m["step"] for m in iters[1]] == [1, 2]
    assert all(m["frac_reward_zero_std"] == 1.0 for m in iters[0] + iters[1])
    assert all(m["objective/scores_std"] > 1e-3 for m in iters[1])  # across groups, prompts did score differently
    for a, b in zip(*iters):
        assert b["objective/scores"] == pytest.approx(a["objective/scores"], abs=1e-4)


ES = [f"es.model={ARCH}", f"es.reward_model={ARCH}", "es.iterations=3", "es.population_size=6", "es.batch_size=4",
      "es.rollout.max_new_tokens=8", "es.eval_every=3", "es.sigma=0.05", "es.lr=0.01"]


def test_es_two_ranks_equal_one_rank_bit_for_bit(tiny_data, tmp_path):
    """Members are split over the ranks (3 each); only their rewards are reduced, every rank applies the same
    update to weights restored exactly, so the saved policy is the same file as 1 rank's."""
    out2, logged2 = launch(2, ES, tiny_data, tmp_path / "two", stage="es")
    _, logged1 = launch(1, ES, tiny_data, tmp_path / "one", stage="es")
    assert "[rank 0] es iteration 3/3" in out2 and "[rank 1] es iteration" not in out2
    iters = [[m for m in logged if "es/reward_mean" in m] for logged in (logged1, logged2)]
    assert [m["step"] for m in iters[1]] == [1, 2, 3]
    assert [m["es/reward_mean"] for m in iters[1]] == [m["es/reward_mean"] for m in iters[0]]
    assert all(m["es/reward_std"] > 0 for m in iters[1])  # members did score differently
    weights = [(tmp_path / name / "model.safetensors").read_bytes() for name in ("one", "two")]
    assert weights[0] == weights[1]
