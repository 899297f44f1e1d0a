"""Evolution strategies from the demo SFT model: it climbs its reward with forward passes only, resumes bit-exactly
from its seed log, and with LoRA moves only the adapters."""
from __future__ import annotations

import torch

from components.data.prepare import load_data_tokenizer, read_split
from components.stage import Hooks, Inputs, inputs_for


def _es(demo_config, **update):
    return demo_config.es.model_validate({**demo_config.es.model_dump(), **update})


def test_es_climbs_the_reward_model_and_the_greedy_gold_score(demo_config, demo_data, sft_run, reward_run, tmp_path):
    from components.es import run

    config = _es(demo_config, iterations=30, eval_every=30)
    logged = []
    dirs = {"data": demo_data.path, "sft": sft_run[0], "reward": reward_run[0]}  # the demo's gold: gold_scores
    m = run(config, inputs_for("es", demo_config, dirs), tmp_path / "es", Hooks(on_log=lambda step, m: logged.append(m)))
    rewards = [m["es/reward_mean"] for m in logged if "es/reward_mean" in m]
    assert len(rewards) == 30
    assert sum(rewards[-5:]) / 5 > sum(rewards[:5]) / 5 + 0.5, rewards  # the population's reward climbs
    assert m["eval/gold_mean"] > m["eval/initial/gold_mean"] + 0.5, m  # held out, by the independent scorer
    assert (tmp_path / "es" / "model.safetensors").is_file()


def _small(demo_config, **update):
    return _es(demo_config, **{"population_size": 4, "batch_size": 4, "iterations": 4, "eval_every": 100,
                               "sigma": 0.05, "lr": 0.01, "rollout": {"max_new_tokens": 8, "temperature": 0},
                               "rewards": [{"function": "components.data.gold:gold_scores"}], **update})


def test_es_resumes_bit_exactly_from_its_base_and_seed_log(demo_config, demo_data, sft_run, tmp_path):
    from components.es import run

    def train(iterations, out, checkpoints=None):
        config = _small(demo_config, iterations=iterations, checkpoint_every=2)
        inputs = Inputs(dirs={"data": demo_data.path, "sft": sft_run[0]}, settings={"gold": None})
        return run(config, inputs, out, Hooks(checkpoint_dir=checkpoints))

    train(4, tmp_path / "straight")
    train(3, tmp_path / "first", tmp_path / "ckpt")  # stops after 3: base at iteration 2, one log line after it
    assert len((tmp_path / "ckpt" / "log.jsonl").read_text().splitlines()) == 1
    train(4, tmp_path / "resumed", tmp_path / "ckpt")  # base + replayed line, then one more iteration
    assert (tmp_path / "resumed" / "model.safetensors").read_bytes() == \
        (tmp_path / "straight" / "model.safetensors").read_bytes()


def test_es_with_lora_moves_only_the_adapters(demo_config, demo_data, sft_run):
    from components.es.train import ES
    from components.models.config import ModelSpec
    from components.models.loading import causal_lm
    from components.models.lora import trainable
    from components.rl.driver import encode_prompts
    from components.rl.rewards import Reward, reward_terms

    config = _small(demo_config, lora={"r": 4, "alpha": 8}, sigma=1.0)  # B starts at 0: it takes a big step to matter
    tok = load_data_tokenizer(demo_data.path)
    lm = trainable(causal_lm(ModelSpec(name_or_path=str(sft_run[0])), tok, "es.model"), config.lora, "CAUSAL_LM")
    texts = [r["prompt"] for r in read_split(demo_data.path, "eval_prompts")[:4]]
    es = ES(config, lm.eval(), tok, Reward(reward_terms(config.rewards, None, None, has_model=False)),
            encode_prompts(tok, texts, 8, 128), texts)
    trained = {n for n, p in lm.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n for n in trained) and len(es.params) == len(trained)
    before = {n: p.detach().clone() for n, p in lm.named_parameters()}
    for _ in range(2):
        es.step()
    after = dict(lm.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trained)  # the base never moves
    assert any(not torch.equal(before[n], after[n]) for n in trained)


def test_es_scores_with_a_bf16_reward_model(demo_config, demo_data, sft_run, reward_run, tmp_path):
    """compute.precision bf16 holds the frozen reward model's linear layers in bf16; ES scores under autocast."""
    import math

    from components.es import run

    compute = {**demo_config.es.compute.model_dump(), "precision": "bf16"}
    config = _small(demo_config, rewards=[{"function": None}], compute=compute)
    logged = []
    inputs = Inputs(dirs={"data": demo_data.path, "sft": sft_run[0], "reward": reward_run[0]}, settings={"gold": None})
    run(config, inputs, tmp_path / "es", Hooks(on_log=lambda step, m: logged.append(m)))
    rewards = [m["es/reward_mean"] for m in logged if "es/reward_mean" in m]
    assert len(rewards) == 4 and all(math.isfinite(r) for r in rewards), rewards
