"""What a reward model sees, on SmolLM2 (pad == EOS == <|im_end|>): read at the EOS that ends the response, the
same sequence in reward training, PPO and evaluation, a scorer with its own tokenizer re-tokenises text."""
from __future__ import annotations

import pytest
import torch

from components.errors import ConfigError, ModelLoadError
from components.reward.scoring import Scorer, pad_right, scored_ids
from components.reward.train import encode_pair

PROMPT_MESSAGES = [{"role": "user", "content": "Review of The Quiet Station:"}]


def _prompt(tok) -> str:
    return tok.apply_chat_template(PROMPT_MESSAGES, tokenize=False, add_generation_prompt=True)


@torch.no_grad()
def test_score_is_read_at_the_eos_that_ends_the_response(smol_tokenizer, smol_classifier):
    tok, rm = smol_tokenizer, smol_classifier
    assert tok.pad_token_id == tok.eos_token_id  # the case HF's pad-id pooling gets wrong
    ended = scored_ids(tok, _prompt(tok), "A great film.")
    cut = scored_ids(tok, _prompt(tok), "A great film.", ended=False)
    longer = scored_ids(tok, _prompt(tok), "A great film with a moving story and a clever script.")
    assert ended[-1] == tok.eos_token_id and cut[-1] != tok.eos_token_id
    batch = rm(*pad_right([ended, cut, longer], tok.pad_token_id))  # ended is padded with EOS ids
    alone = rm(*pad_right([ended], tok.pad_token_id))
    torch.testing.assert_close(batch[0], alone[0], atol=1e-4, rtol=1e-4)  # padding never moves the read
    assert abs(batch[0] - batch[1]) > 1e-3  # a response cut off without EOS is not scored like one that ended
    # HF's own head reads the last token that is not the pad id: the '.' before EOS, i.e. the cut-off score
    hf = rm.model(*pad_right([ended], tok.pad_token_id)).logits[:, 0]
    torch.testing.assert_close(hf[0], batch[1], atol=1e-4, rtol=1e-4)


def test_reward_training_and_ppo_score_the_same_tokens(smol_tokenizer, smol_classifier):
    """encode_pair (reward training) and a PPO rollout scored by a same-tokenizer Scorer: identical ids,
    identical scores; SFT's chat completion carries exactly one EOS."""
    from components.sft.data import encode

    tok, prompt = smol_tokenizer, _prompt(smol_tokenizer)
    response = "The acting was superb.<|im_end|>"  # as data prep renders a chat completion
    chosen, _ = encode_pair(tok, {"prompt": prompt, "chosen": response, "rejected": "Dull."}, max_length=80)
    assert chosen.count(tok.eos_token_id) == tok(prompt, add_special_tokens=False)["input_ids"].count(
        tok.eos_token_id) + 1
    ids, _ = encode(tok, prompt, response, max_length=80)
    assert ids == chosen and ids[-2] != tok.eos_token_id  # no second EOS after the template's
    # a PPO batch: the prompt left-padded, the response (ending in EOS) right-padded, as rollout() builds it
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok("The acting was superb.", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    row = [tok.pad_token_id] * 3 + p + r + [tok.pad_token_id] * 4
    mask = [0] * 3 + [1] * (len(p) + len(r)) + [0] * 4
    scorer = Scorer(smol_classifier, tok, tok, 8192)
    assert scorer.same
    ppo = scorer(torch.tensor([row]), torch.tensor([mask]), [prompt], ["The acting was superb."], torch.tensor([True]))
    train = smol_classifier(*pad_right([chosen], tok.pad_token_id))
    torch.testing.assert_close(ppo, train, atol=1e-4, rtol=1e-4)


def test_a_scorer_with_its_own_tokenizer_gets_retokenised_text(smol_tokenizer, tokenizer, tmp_path):
    """A reward model trained with another tokenizer (the demo's BPE, GPT-2) scores SmolLM2 samples from their
    text in its own tokens, its embeddings untouched; past its context it keeps the last tokens, counted."""
    from components.models.config import ArchSpec, ModelSpec, ScorerSpec
    from components.models.loading import reward_model, save_pretrained
    from components.reward.scoring import load_scorer

    torch.manual_seed(0)
    spec = ModelSpec(arch=ArchSpec(n_layer=1, hidden_size=32, n_head=2, max_positions=24))
    save_pretrained(reward_model(spec, tokenizer, "test"), tokenizer, tmp_path / "rm")
    scorer = load_scorer(ScorerSpec(name_or_path=str(tmp_path / "rm")), smol_tokenizer, "ppo.reward_model")
    assert not scorer.same and scorer.tokenizer.get_vocab() == tokenizer.get_vocab()
    assert scorer.model.model.get_input_embeddings().num_embeddings == len(tokenizer)  # not resized to 49k
    smol = smol_tokenizer
    prompt = _prompt(smol)
    p = smol(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p + [smol.eos_token_id]])  # SmolLM2 ids, meaningless to the foreign model
    got = scorer(ids, torch.ones_like(ids), ["Review of X:"], ["Great film."], torch.tensor([True]))
    own = scored_ids(tokenizer, "Review of X:", "Great film.")
    torch.testing.assert_close(got, scorer.model(*pad_right([own], tokenizer.pad_token_id)))
    long_response = " ".join(["great"] * 40)
    scorer(ids, torch.ones_like(ids), ["Review of X:"], [long_response], torch.tensor([False]))
    assert scorer.truncated == 1  # 40+ tokens > its 24-token context: last 24 kept, counted


def test_a_pretrained_model_is_never_silently_resized(smollm2, tokenizer):
    from components.models.config import ModelSpec
    from components.models.loading import causal_lm

    tok = _with_extra_tokens(tokenizer, 49152 + 8)
    with pytest.raises(ModelLoadError, match="resize_embeddings"):
        causal_lm(ModelSpec(name_or_path=str(smollm2)), tok, field="sft.model")


def _with_extra_tokens(tokenizer, total: int):
    import copy
    tok = copy.deepcopy(tokenizer)
    tok.add_tokens([f"<extra_{i}>" for i in range(total - len(tok))])
    return tok


def test_off_the_shelf_classifier_reads_its_positive_label(smollm2, smol_tokenizer, tmp_path):
    """A two-label classifier (NEGATIVE, POSITIVE): label_index picks the logit; without it, a clear error."""
    from transformers import AutoModelForSequenceClassification

    from components.models.config import ScorerSpec
    from components.reward.scoring import load_scorer

    torch.manual_seed(0)
    clf = AutoModelForSequenceClassification.from_pretrained(
        str(smollm2), num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1})
    clf.save_pretrained(tmp_path / "clf")
    smol_tokenizer.save_pretrained(tmp_path / "clf")
    with pytest.raises(ConfigError, match="label_index"):
        load_scorer(ScorerSpec(name_or_path=str(tmp_path / "clf")), smol_tokenizer, "ppo.reward_model")
    scorer = load_scorer(ScorerSpec(name_or_path=str(tmp_path / "clf"), label_index="POSITIVE"), smol_tokenizer,
                         "ppo.reward_model")
    assert scorer.same and scorer.model.label_index == 1
    with pytest.raises(ModelLoadError, match="not a sequence classifier"):
        load_scorer(ScorerSpec(name_or_path=str(smollm2)), smol_tokenizer, "ppo.reward_model")
