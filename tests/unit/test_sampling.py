"""The rollout's sampler: `generate` decodes greedily through `sampling_processors`, which draw each token from the
warped softmax, so its tokens must follow that distribution (frequencies within 5 standard errors)."""
from __future__ import annotations

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from components.rl.config import RolloutConfig
from components.rl.generation import InverseCDFSample, sampling_processors


def assert_follows(tokens: torch.Tensor, probs: torch.Tensor):
    """Each token's frequency within 5 standard errors of its probability (tokens (N,), probs (V,))."""
    n = tokens.numel()
    freq = torch.bincount(tokens, minlength=probs.numel()).double() / n
    se = (probs.double() * (1 - probs.double()) / n).sqrt()
    assert ((freq - probs.double()).abs() <= 5 * se + 1e-12).all(), (freq, probs)


def draw(processors, logits: torch.Tensor, n: int) -> torch.Tensor:
    """n draws of the processors' pick for one row of logits (1, V)."""
    return processors(None, logits.expand(n, -1).clone()).argmax(-1)


def test_a_draw_follows_the_softmax():
    torch.manual_seed(0)
    logits = torch.randn(1, 40) * 2
    logits[0, 7] = float("-inf")  # a masked token is never drawn
    tokens = draw(InverseCDFSample(), logits, 100_000)
    assert_follows(tokens, torch.softmax(logits, -1)[0])
    assert (tokens != 7).all()


def test_temperature_top_k_and_top_p_warp_before_the_draw():
    torch.manual_seed(1)
    logits = torch.tensor([[3.0, 2.5, 2.0, 1.0, 0.5, -1.0]])
    config = RolloutConfig(temperature=2.0, top_k=4, top_p=0.85)
    warped = logits / 2.0
    warped[0, 4:] = float("-inf")  # top 4
    p = torch.softmax(warped, -1)[0]
    # top_p 0.85 drops the tail whose mass is at most 1 - 0.85 (HF's rule): here token 3
    assert p[3] <= 0.15 < p[2] + p[3]
    warped[0, 3] = float("-inf")
    tokens = draw(sampling_processors(config), logits, 100_000)
    assert_follows(tokens, torch.softmax(warped, -1)[0])


def test_temperature_zero_is_greedy():
    assert len(sampling_processors(RolloutConfig(temperature=0.0))) == 0


def test_generate_samples_its_first_token_from_the_models_softmax():
    torch.manual_seed(2)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=12, n_positions=16)).eval()
    prompt = torch.tensor([[3, 5, 7]]).expand(20_000, -1)
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=1,
                         do_sample=False, logits_processor=sampling_processors(RolloutConfig()), pad_token_id=0,
                         output_logits=True, return_dict_in_generate=True)
    assert_follows(out.sequences[:, -1], torch.softmax(out.logits[0][0], -1))
    assert out.sequences[:, -1].unique().numel() > 1  # it sampled, not argmax
