"""StochasticRoundingAdamW (compute.precision bf16-true): AdamW's update, and bf16 rounding that is unbiased."""
import torch

from components.compute.optim import StochasticRoundingAdamW, round_to_bf16, rounding_bits


def test_fp32_parameters_get_exactly_torch_adamw():
    torch.manual_seed(0)
    a = torch.randn(300, 37, requires_grad=True)
    b, start = a.detach().clone().requires_grad_(True), a.detach().clone()
    ours = StochasticRoundingAdamW([b], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    theirs = torch.optim.AdamW([a], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    for _ in range(6):
        grad = torch.randn_like(a)
        a.grad, b.grad = grad.clone(), grad.clone()
        theirs.step()
        ours.step()
        for opt in (ours, theirs):  # a scheduler changing lr between steps (DeepSpeed's sets a float)
            opt.param_groups[0]["lr"] *= 0.7
    torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-6)
    assert (b != start).float().mean() > 0.99  # the weights moved


def test_clipping_in_the_step_is_torch_clip_grad_norm():
    torch.manual_seed(0)
    a = [torch.randn(50, 20, requires_grad=True), torch.randn(7, requires_grad=True)]
    b = [t.detach().clone().requires_grad_(True) for t in a]
    ours, theirs = StochasticRoundingAdamW(b, lr=1e-2, max_grad_norm=0.5), torch.optim.AdamW(a, lr=1e-2)
    for scale in (10.0, 0.01, 10.0):  # clipped, not clipped (norm below 0.5), clipped
        grads = [torch.randn_like(t) * scale for t in a]
        for x, y, grad in zip(a, b, grads):
            x.grad, y.grad = grad.clone(), grad.clone()
        torch.nn.utils.clip_grad_norm_(a, 0.5)
        theirs.step()
        ours.step()
    for x, y in zip(a, b):
        torch.testing.assert_close(y, x, atol=1e-6, rtol=1e-6)


def test_rounding_bits_are_uniform_and_differ_by_seed():
    bits = rounding_bits(1 << 20, torch.tensor(5, dtype=torch.int32))
    assert bits.dtype == torch.int32 and bits.min() >= 0 and bits.max() < 65536
    counts = torch.histc(bits.float(), 16, 0, 65536)
    expected = (1 << 20) / 16
    assert ((counts - expected).abs() < 5 * expected ** 0.5).all(), counts  # within 5 standard errors
    other = rounding_bits(1 << 20, torch.tensor(6, dtype=torch.int32))
    assert (bits == other).float().mean() < 0.01


def test_stochastic_rounding_is_unbiased_where_round_to_nearest_is_not():
    x = torch.full((1 << 20,), 0.05 + 3e-5)  # between two bf16 values 2.4e-4 apart
    nearest = x.to(torch.bfloat16).float()[0]
    rounded = round_to_bf16(x, rounding_bits(len(x), torch.tensor(1, dtype=torch.int32))).float()
    low, high = rounded.unique().tolist()  # only the two bf16 neighbours of x
    assert low < x[0] < high and high - low == 2 ** -12
    assert abs(rounded.mean().item() - x[0].item()) < 1e-6 < abs(nearest.item() - x[0].item())
    negative = round_to_bf16(-x, rounding_bits(len(x), torch.tensor(2, dtype=torch.int32))).float()
    assert abs(negative.mean().item() + x[0].item()) < 1e-6


def test_updates_below_half_a_bf16_step_accumulate():
    """lr 1e-5 on weights of 0.05 (bf16 step 2.4e-4): round-to-nearest never moves them; stochastic rounding moves
    them by lr per step on average."""
    w = torch.full((4096,), 0.05, dtype=torch.bfloat16, requires_grad=True)
    opt = StochasticRoundingAdamW([w], lr=1e-5)
    for _ in range(200):
        w.grad = -torch.ones_like(w)  # Adam's normalised step: +lr per step
        opt.step()
    assert abs(w.float().mean().item() - (0.05 + 200 * 1e-5)) < 2e-4
    assert opt.state[w]["exp_avg"].dtype == opt.state[w]["exp_avg_sq"].dtype == torch.bfloat16


def test_bf16_true_casts_parameters_not_buffers():
    """As from_pretrained(dtype=bfloat16) does: a bf16 rotary inv_freq would shift every position's angle."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from components.models.precision import freeze

    model = freeze(LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=2)), "bf16-true")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.model.rotary_emb.inv_freq.dtype == torch.float32
