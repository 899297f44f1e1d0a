"""PPO on real DeepSpeed engines, from the demo SFT model and reward model."""
from __future__ import annotations

import json

import pytest
import torch

from components.data.gold import gold_scores
from components.data.prepare import load_data_tokenizer, read_split
from components.errors import DataError
from components.ppo import PPOConfig, run, train
from components.rl.rewards import RewardError, RewardTerm
from components.stage import Hooks, inputs_for

TINY = dict(iterations=2, batch_size=8, num_minibatches=2, ppo_epochs=2, lr=1e-4, eval_every=100,
            compute={"micro_batch_size": 2}, rollout={"max_new_tokens": 12})


def _prompts(demo_data, n=32):
    return list(dict.fromkeys(r["prompt"] for r in read_split(demo_data.path, "preference_train")))[:n]


def _iterations(result):
    return [h for h in result.history if "loss/policy_avg" in h]


@pytest.fixture(scope="module")
def ppo_run(demo_config, demo_data, sft_run, reward_run, tmp_path_factory):
    out, logged = tmp_path_factory.mktemp("ppo") / "policy", []
    dirs = {"data": demo_data.path, "sft": sft_run[0], "reward": reward_run[0]}
    assert demo_config.gold_fn == "components.data.gold:gold_scores"  # the gold scorer of held-out samples
    metrics = run(demo_config.ppo, inputs_for("ppo", demo_config, dirs), out,
                  Hooks(on_log=lambda step, m: logged.append((step, m))))
    return out, metrics, logged


def test_ppo_beats_sft_by_the_gold_scorer(ppo_run):
    out, m, logged = ppo_run
    # The gold scorer never trained anything: a rise is real. Each held-out prompt is compared by its mean
    # gold score over 4 samples from the PPO policy and 4 from the SFT policy (ties count half).
    assert m["eval/gold_win_rate_vs_initial"] >= 0.75, m
    assert m["eval/gold_mean"] > m["eval/initial/gold_mean"] + 1.0, m
    assert m["eval/score_mean"] > m["eval/initial/score_mean"], m
    assert 0.0 < m["eval/kl_to_ref"] < 20.0, m  # KL to the reference stays bounded (nats per response)
    assert [step for step, x in logged if "loss/policy_avg" in x] == list(range(1, 61))
    assert (out / "model.safetensors").is_file() and json.loads((out / "metrics.json").read_text())["eval/gold_mean"]
    assert len((out / "eval_samples.jsonl").read_text().splitlines()) == 64 * 4


def test_saved_policy_loads_and_generates(ppo_run, demo_data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, result, _ = ppo_run
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    ids = tok("Review of The Wild Promise:", return_tensors="pt")
    text = tok.decode(model.generate(**ids, max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id)[0])
    assert text.startswith("Review of The Wild Promise:") and len(text) > 40


def test_rollout_logprobs_and_values_match_a_full_forward(demo_data, sft_run):
    """The old log-probs and values come from generate's own steps (no second forward); they must equal a
    full forward of the finished sequences, also after trimming a minibatch's padding columns."""
    from components.ppo.api import build_models
    from components.rl.driver import encode_prompts
    from components.ppo.trainer import PPOTrainer
    from components.rl.generation import left_pad, rollout

    tok = load_data_tokenizer(demo_data.path)
    config = PPOConfig(**TINY)
    models = build_models(config, tok, _spec(sft_run[0]), None)
    texts = _prompts(demo_data, 8)
    prompts = encode_prompts(tok, texts, 12, 128)
    trainer = PPOTrainer(config, models, tok, prompts, texts, [RewardTerm("gold", 1.0, gold_scores)])
    ids, mask = left_pad(prompts, tok.pad_token_id, trainer.prompt_width + 3)
    with torch.no_grad():
        batch = rollout(trainer.actor, trainer.actor.lm, ids, mask, config.rollout, tok)
        for rows in (torch.arange(8), torch.tensor([1, 4])):
            part = batch.select(rows)
            logits, values = trainer.actor(part.input_ids, part.attention_mask, part.n_response)
            logp = torch.log_softmax(logits, -1).gather(2, part.input_ids[:, -part.n_response:, None])[..., 0]
            m = part.response_mask
            torch.testing.assert_close(logp * m, part.logprobs * m, atol=1e-4, rtol=0)
            torch.testing.assert_close(values * m, part.values * m, atol=1e-4, rtol=0)
    assert batch.select(torch.tensor([1, 4])).input_ids.size(1) < batch.input_ids.size(1)  # padding trimmed


def _spec(path):
    from components.models.config import ModelSpec
    return ModelSpec(name_or_path=str(path))


def test_resume_continues_exactly(demo_data, sft_run, tmp_path):
    """6 iterations in one go == 3 iterations, a checkpoint, and a resumed run to 6 (adaptive KL and reward
    normalisation included, so their state must come back too): the same weights, and the same history and
    metrics, those of the iterations before the checkpoint included (they come back from it)."""
    settings = dict(TINY, iterations=6, checkpoint_every=3, kl={"adaptive": True, "target": 1.0, "horizon": 100},
                    reward_normalize=True)
    prompts = _prompts(demo_data)
    tok = load_data_tokenizer(demo_data.path)

    def go(iterations, ckpt, name):  # a run finding a checkpoint in its checkpoint_dir resumes it
        return train(prompts, gold_scores, PPOConfig(**{**settings, "iterations": iterations}), model=sft_run[0],
                     tokenizer=tok, hooks=Hooks(checkpoint_dir=ckpt), out_dir=tmp_path / name)

    straight = _iterations(go(6, tmp_path / "a", "out6False"))
    first = _iterations(go(3, tmp_path / "b", "out3False"))
    resumed = _iterations(go(6, tmp_path / "b", "out6True"))
    assert [h["iteration"] for h in first] == [1, 2, 3] and [h["iteration"] for h in resumed] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(straight, resumed):
        for key in ("loss/policy_avg", "loss/value_avg", "objective/scores", "objective/kl", "objective/kl_coef", "objective/shaped_scores"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), (a["iteration"], key)
    w_straight = _weights(tmp_path / "out6False")
    w_resumed = _weights(tmp_path / "out6True")
    assert all(torch.equal(w_straight[k], w_resumed[k]) for k in w_straight)
    for name in ("metrics.json", "history.jsonl", "eval_samples.jsonl"):
        assert (tmp_path / "out6True" / name).read_text() == (tmp_path / "out6False" / name).read_text(), name


def _weights(path):
    from safetensors.torch import load_file
    return load_file(str(path / "model.safetensors"))


def test_zero3_and_a_separate_critic_match_or_run(demo_data, sft_run, reward_run):
    """ZeRO-3 (sharded actor, sharded frozen reference and reward model, gathered generation) takes the same
    steps as ZeRO-0; a separate critic trains its own backbone."""
    prompts = _prompts(demo_data)
    tok = load_data_tokenizer(demo_data.path)
    results = {}
    for name, extra in {"zero0": {}, "zero3": {"compute": {"micro_batch_size": 2, "zero_stage": 3}}}.items():
        result = train(prompts, config=PPOConfig(**{**TINY, **extra}), model=sft_run[0], reward_model=reward_run[0],
                       tokenizer=tok)
        results[name] = _iterations(result)
    for a, b in zip(results["zero0"], results["zero3"]):
        for key in ("loss/policy_avg", "loss/value_avg", "objective/scores", "objective/kl"):
            assert b[key] == pytest.approx(a[key], abs=1e-4), key
    critic = _iterations(train(prompts, config=PPOConfig(**{**TINY, "critic": "separate", "critic_lr": 1e-3}),
                               model=sft_run[0], reward_model=reward_run[0], tokenizer=tok))
    assert critic[-1]["loss/value_avg"] < critic[0]["loss/value_avg"] * 2 and all(
        torch.isfinite(torch.tensor(list(h.values()))).all() for h in critic)


def test_lora_trains_only_adapters_and_uses_the_base_as_reference(demo_data, sft_run):
    from components.ppo.api import build_models
    from components.rl.driver import encode_prompts
    from components.ppo.trainer import PPOTrainer

    tok = load_data_tokenizer(demo_data.path)
    config = PPOConfig(**{**TINY, "lora": {"r": 4, "alpha": 8}})
    models = build_models(config, tok, _spec(sft_run[0]), None)
    assert models.reference is None
    texts = _prompts(demo_data)
    terms = [RewardTerm("gold", 1.0, gold_scores)]
    trainer = PPOTrainer(config, models, tok, encode_prompts(tok, texts, 12, 128), texts, terms)
    before = {n: p.detach().clone() for n, p in trainer.actor.named_parameters()}
    first = trainer.step()
    assert abs(first["objective/kl"]) < 1e-4  # adapters start at zero: the policy is its reference
    trainer.step()
    changed = {n for n, p in trainer.actor.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n or n.startswith("v_head") for n in changed)
    assert any("lora_" in n for n in changed)


def test_lora_in_bf16_holds_its_frozen_base_in_bf16_with_the_same_forwards(demo_data, sft_run, tmp_path):
    """compute.precision bf16 with LoRA: the engine holds the frozen base's Linear weights in bf16 (what autocast
    casts them to anyway), the adapters and value head stay fp32 and trainable; the forward under autocast is
    bit-identical to an fp32-held base's, the base still plays the reference exactly (ratio 1, KL 0 at step 0), and
    the saved policy is merged in fp32."""
    from components.models.lora import merged
    from components.ppo.api import build_models
    from components.rl.driver import encode_prompts
    from components.ppo.trainer import PPOTrainer

    tok = load_data_tokenizer(demo_data.path)
    config = PPOConfig(**{**TINY, "lora": {"r": 4, "alpha": 8}, "compute": {"micro_batch_size": 2,
                                                                            "precision": "bf16"}})
    texts = _prompts(demo_data, 8)
    prompts = encode_prompts(tok, texts, 12, 128)
    models = build_models(config, tok, _spec(sft_run[0]), None)
    actor = models.actor.module
    dtypes = {n: p.dtype for n, p in actor.named_parameters()}
    assert {d for n, d in dtypes.items() if n.endswith("base_layer.weight")} == {torch.bfloat16}
    assert {d for n, d in dtypes.items() if "lora_" in n or n.startswith("v_head") or "wte" in n} == {torch.float32}
    reference = build_models(config.model_copy(update={"compute": config.compute.model_copy(
        update={"precision": "fp32"})}), tok, _spec(sft_run[0]), None).actor.module  # the same init, base in fp32
    assert {p.dtype for p in reference.parameters()} == {torch.float32}
    ids = torch.tensor([prompts[0] + prompts[1][:4]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for a, b in zip(actor(ids, torch.ones_like(ids), 6), reference(ids, torch.ones_like(ids), 6)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)

    trainer = PPOTrainer(config, models, tok, prompts, texts, [RewardTerm("gold", 1.0, gold_scores)])
    batch, _ = trainer.rollout_and_score(prompts, texts)
    m = batch.response_mask
    torch.testing.assert_close(batch.logprobs * m, batch.ref_logprobs * m, atol=0, rtol=0)
    trainer.step()
    saved = merged(actor.lm)
    assert {p.dtype for p in saved.parameters()} == {torch.float32} and not hasattr(saved, "peft_config")


def test_bad_rewards_and_prompts_fail_clearly(demo_data, sft_run):
    tok = load_data_tokenizer(demo_data.path)
    prompts = _prompts(demo_data, 16)
    config = PPOConfig(**{**TINY, "iterations": 1})

    def nan_rewards(p, r):
        return [float("nan") if i == 3 else 1.0 for i in range(len(r))]

    with pytest.raises(RewardError, match="NaN or inf for 1 of 8 responses"):
        train(prompts, nan_rewards, config, model=sft_run[0], tokenizer=tok)
    with pytest.raises(RewardError, match="returned 7 scores for 8 responses"):
        train(prompts, lambda p, r: [0.0] * (len(r) - 1), config, model=sft_run[0], tokenizer=tok)
    skipped = train(prompts, nan_rewards, config.model_copy(update={"nonfinite_rewards": "skip"}),
                    model=sft_run[0], tokenizer=tok)
    assert skipped.metrics["objective/nonfinite_skipped"] == 1.0
    assert torch.isfinite(torch.tensor(skipped.metrics["loss/policy_avg"]))
    with pytest.raises(DataError, match="no prompts"):
        train([], gold_scores, config, model=sft_run[0], tokenizer=tok)
    with pytest.raises(DataError, match="prompt 1 has .* exceeds the model's context of 128"):
        train([prompts[0], "word " * 130], gold_scores, config, model=sft_run[0], tokenizer=tok)


def test_kl_as_a_loss_term_ptx_and_sampling_options_run(demo_data, sft_run, demo_config):
    """The non-default paths: KL (k3) in the loss instead of the reward, the ptx loss on SFT data, top-k/top-p
    sampling, the missing-EOS penalty and reward normalisation, through the stage entry point."""
    config = PPOConfig(**{**TINY, "kl": {"in_reward": False, "estimator": "k3"}, "ptx_coef": 0.5,
                          "rollout": {"max_new_tokens": 12, "top_k": 20, "top_p": 0.9},
                          "missing_eos_penalty": 1.0, "reward_normalize": True, "reward_model": None,
                          "model": {"name_or_path": str(sft_run[0])}})
    tok = load_data_tokenizer(demo_data.path)
    from components.sft.data import encode
    ptx = [encode(tok, r["prompt"], r["completion"], 64) for r in read_split(demo_data.path, "sft_train")[:64]]
    result = train(_prompts(demo_data), gold_scores, config, tokenizer=tok, ptx_examples=ptx)
    last = _iterations(result)[-1]
    assert 0.0 < last["loss/ptx_avg"] < 5.0  # the SFT model's own loss on SFT data is low
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values())
    assert last["objective/shaped_scores"] != last["objective/scores"]  # normalised


def _two_steps(trainer):
    """Two PPO iterations with finite statistics and a small step; the LM's weights before and after."""
    before = {k: v.clone() for k, v in trainer.actor.lm.state_dict().items()}
    for _ in range(2):
        stats = trainer.step()
        assert all(torch.isfinite(torch.tensor(v)) for v in stats.values()), stats
    assert stats["policy/approxkl_avg"] < 0.05, stats
    return before, trainer.actor.lm.state_dict()


def test_bf16_starts_at_ratio_one_and_zero_kl_and_stays_near_fp32(demo_data, sft_run, reward_run):
    """compute.precision bf16: autocast matmuls over fp32 master weights; the reference and reward model hold their
    Linear weights in bf16 (embeddings, norms and output heads fp32). At step 0 the update's ratio is exactly 1 and the
    KL to the reference exactly 0, because the old log-probs come from a forward of the update's shape and the frozen
    copy computes what the policy computes; on the same samples bf16 log-probs stay within bf16 noise of fp32's."""
    from components.models.config import ScorerSpec
    from components.models.precision import Float32Head
    from components.ppo.api import build_models
    from components.rl.driver import encode_prompts
    from components.ppo.losses import logprobs_and_entropy
    from components.ppo.trainer import PPOTrainer

    tok = load_data_tokenizer(demo_data.path)
    texts = _prompts(demo_data, 8)
    prompts = encode_prompts(tok, texts, 12, 128)
    trainers, batches = {}, {}
    for precision in ("fp32", "bf16"):
        config = PPOConfig(**{**TINY, "compute": {"micro_batch_size": 2, "precision": precision}})
        models = build_models(config, tok, _spec(sft_run[0]), ScorerSpec(name_or_path=str(reward_run[0])))
        trainers[precision] = PPOTrainer(config, models, tok, prompts, texts, [RewardTerm("reward_model")])
        batches[precision], _ = trainers[precision].rollout_and_score(prompts, texts)
    trainer, batch, m = trainers["bf16"], batches["bf16"], batches["bf16"].response_mask
    models = trainer.models
    assert models.actor.torch_autocast_enabled() and {p.dtype for p in models.actor.parameters()} == {torch.float32}
    from transformers.pytorch_utils import Conv1D

    def linear_dtypes(model):
        return {mod.weight.dtype for mod in model.modules() if type(mod) in (torch.nn.Linear, Conv1D)}

    assert linear_dtypes(models.reference) == {torch.bfloat16} == linear_dtypes(models.scorer.model)
    assert isinstance(models.reference.get_output_embeddings(), Float32Head)
    assert models.reference.get_output_embeddings().weight.dtype == torch.float32

    torch.testing.assert_close(batch.logprobs * m, batch.ref_logprobs * m, atol=0, rtol=0)  # KL 0 at step 0
    with torch.no_grad():
        for rows in (torch.tensor([0, 5]), torch.tensor([7, 2])):  # micro batches as the update builds them
            part = batch.select(rows, trim=False)
            logits, _ = models.actor(part.input_ids, part.attention_mask, part.n_response)  # the engine: autocast
            logp = logprobs_and_entropy(logits, part.input_ids[:, -part.n_response:])[0]
            torch.testing.assert_close(logp * part.response_mask, part.logprobs, atol=0, rtol=0)  # ratio exactly 1
        # the fp32 run's samples, scored by the bf16 policy: bf16 noise, not a different function
        fp32 = batches["fp32"]
        logits, _ = models.actor(fp32.input_ids, fp32.attention_mask, fp32.n_response)
        logp = logprobs_and_entropy(logits, fp32.input_ids[:, -fp32.n_response:])[0] * fp32.response_mask
    assert (logp - fp32.logprobs).abs().sum() / fp32.response_mask.sum() < 0.01
    assert (logp - fp32.logprobs).abs().max() < 0.1

    before, after = _two_steps(trainer)
    assert all(after[k].dtype == torch.float32 for k in before)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_bf16_true_holds_every_model_in_bf16_and_starts_at_ratio_one_and_zero_kl(demo_data, sft_run, reward_run):
    """compute.precision bf16-true: policy (and value head), reference and reward model wholly bf16, output heads
    computed in fp32, moments bf16. At step 0 the update's ratio is exactly 1 and the KL exactly 0; the steps move
    the bf16 weights (stochastic rounding)."""
    from components.models.config import ScorerSpec
    from components.ppo.api import build_models
    from components.rl.driver import encode_prompts
    from components.ppo.losses import logprobs_and_entropy
    from components.ppo.trainer import PPOTrainer

    tok = load_data_tokenizer(demo_data.path)
    texts = _prompts(demo_data, 8)
    prompts = encode_prompts(tok, texts, 12, 128)
    config = PPOConfig(**{**TINY, "compute": {"micro_batch_size": 2, "precision": "bf16-true"}})
    models = build_models(config, tok, _spec(sft_run[0]), ScorerSpec(name_or_path=str(reward_run[0])))
    trainer = PPOTrainer(config, models, tok, prompts, texts, [RewardTerm("reward_model")])
    assert not models.actor.torch_autocast_enabled()
    for model in (models.actor.module, models.reference, models.scorer.model):
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    batch, _ = trainer.rollout_and_score(prompts, texts)
    m = batch.response_mask
    assert batch.logprobs.dtype == torch.float32 and m.sum() > 0
    torch.testing.assert_close(batch.logprobs * m, batch.ref_logprobs * m, atol=0, rtol=0)  # KL 0 at step 0
    with torch.no_grad():
        part = batch.select(torch.tensor([0, 5]), trim=False)  # a micro batch as the update builds it
        logits, _ = models.actor(part.input_ids, part.attention_mask, part.n_response)
        logp = logprobs_and_entropy(logits, part.input_ids[:, -part.n_response:])[0]
        torch.testing.assert_close(logp * part.response_mask, part.logprobs, atol=0, rtol=0)  # ratio exactly 1

    before, after = _two_steps(trainer)
    moved = [k for k in before if before[k].is_floating_point() and not torch.equal(before[k], after[k])]
    assert len(moved) > 0.9 * sum(p.is_floating_point() for p in before.values()), moved
    moments = [t for s in models.actor.optimizer.state.values() for k, t in s.items() if k.startswith("exp_avg")]
    assert moments and {t.dtype for t in moments} == {torch.bfloat16}
