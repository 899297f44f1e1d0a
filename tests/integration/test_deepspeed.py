"""The DeepSpeed module: ZeRO stages agree, checkpoints resume exactly."""
import pytest
import torch

from components.compute import engine as ds
from components.compute.config import ComputeConfig
from components.config.loading import load_config
from components.data.prepare import load_data_tokenizer, read_split
from components.models.loading import causal_lm
from components.models.lora import LoRAConfig, apply_lora
from components.sft.data import collate, encode, token_nll
from components.sft.train import run
from components.stage import Hooks, inputs_for


def first_losses(demo_data, tmp_path, stage: int) -> list[float]:
    config = load_config("configs/demo.yaml", [f"sft.compute.zero_stage={stage}", "sft.max_steps=3",
                                               "sft.log_every=1", "sft.eval_every=1000"])
    logged = []
    run(config.sft, inputs_for("sft", config, {"data": demo_data.path}), tmp_path / f"z{stage}",
        Hooks(on_log=lambda s, m: logged.append(m)))
    return [m["sft/train/loss"] for m in logged if "sft/train/loss" in m]


def test_zero_stage_0_and_3_give_the_same_losses(demo_data, tmp_path):
    zero0, zero3 = first_losses(demo_data, tmp_path, 0), first_losses(demo_data, tmp_path, 3)
    assert len(zero0) == len(zero3) == 3
    # Same batch, same init: identical first-step loss; later steps agree to fp32 reduction-order noise.
    assert abs(zero0[0] - zero3[0]) < 1e-6
    assert max(abs(a - b) for a, b in zip(zero0, zero3)) < 1e-4


def _engine(demo_data, tokenizer, lora: LoRAConfig | None = None, precision: str = "fp32"):
    torch.manual_seed(0)
    model = apply_lora(causal_lm(load_config().sft.model, tokenizer, field="sft.model"), lora, "CAUSAL_LM")
    return ds.initialize(model, ds.ds_config(ComputeConfig(micro_batch_size=8, precision=precision), 1e-3, 0.0, 2, 10))


def _step(engine, batch) -> float:
    nll, n = token_nll(engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                       batch["labels"])
    loss = nll / n
    engine.backward(loss)
    engine.step()
    return loss.item()


@pytest.mark.parametrize("lora,precision", [(None, "fp32"), (LoRAConfig(r=4, alpha=8), "fp32"), (None, "bf16-true")],
                         ids=["full", "lora", "bf16-true"])
def test_checkpoint_resumes_exactly(demo_data, tmp_path, lora, precision):
    """With LoRA the checkpoint holds the adapters and their optimizer state, not the frozen base (rebuilt from
    the input model on resume), and resumes as exactly as a full one. bf16-true: bf16 weights and moments, and the
    stochastic rounding (a hash of step and position, no RNG state) repeats exactly after a resume."""
    tokenizer = load_data_tokenizer(demo_data.path)
    rows = read_split(demo_data.path, "sft_train")[:32]
    batches = [collate([encode(tokenizer, r["prompt"], r["completion"], 64) for r in rows[i:i + 8]], 0)
               for i in range(0, 32, 8)]
    first = _engine(demo_data, tokenizer, lora, precision)
    for b in batches[:2]:
        _step(first, b)
    ds.save_checkpoint(first, tmp_path / "ckpt", tag="step2", client_state={"data_position": 2})
    expected = [_step(first, b) for b in batches[2:]]
    saved = torch.load(next((tmp_path / "ckpt" / "step2").glob("mp_rank_*")), weights_only=False)["module"]
    frozen = {n for n, p in first.module.named_parameters() if not p.requires_grad}
    trained = {n for n, p in first.module.named_parameters() if p.requires_grad}
    assert trained <= set(saved) and not frozen & set(saved) and bool(frozen) == (lora is not None)

    if precision == "bf16-true":
        moments = [t for state in first.optimizer.state.values() for k, t in state.items() if k.startswith("exp_avg")]
        assert {p.dtype for p in first.module.parameters()} == {t.dtype for t in moments} == {torch.bfloat16}
    resumed = _engine(demo_data, tokenizer, lora, precision)
    state = ds.load_checkpoint(resumed, tmp_path / "ckpt")
    assert state["data_position"] == 2 and resumed.global_steps == 2
    assert [_step(resumed, b) for b in batches[2:]] == expected
