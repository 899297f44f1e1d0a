"""What a reward model sees and where its score is read: one place for reward training, PPO and evaluation.

The scored sequence is `prompt tokens + response tokens + EOS` (EOS only when the response ended; a response cut
off at the length limit is scored without it). The score is read at the last real token, found from the attention
mask: never from the pad id, which equals EOS in SmolLM2, Llama, Qwen and GPT-2 style tokenizers, so HF's own
pooling ("last token that is not pad") reads the token *before* EOS there.
"""
from __future__ import annotations

import torch
from torch import nn

from components.errors import ConfigError
from components.models.config import ScorerSpec
from components.models.forward import inner_model, position_ids
from components.models.loading import context_length, disable_dropout, fused_gelu, reward_model, scorer_model


def scored_ids(tokenizer, prompt: str, response: str, ended: bool = True) -> list[int]:
    """Token ids a reward model scores: prompt, then response, then EOS when the response ended (unless the
    response's own tokens already end with EOS, as a chat template's closed turn does)."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] + tokenizer(response, add_special_tokens=False)["input_ids"]
    if ended and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids.append(tokenizer.eos_token_id)
    return ids


def last_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index (B,) of the last position whose mask is 1, whatever the padding side. (B, T) -> (B,)."""
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return (attention_mask.long() * (positions + 1)).argmax(1)


def right_align(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Move real tokens to the left (in order) and padding to the right: (ids, mask), both (B, T)."""
    order = torch.argsort(1 - attention_mask.long(), dim=1, stable=True)
    ids = torch.where(attention_mask.bool(), input_ids, pad_id).gather(1, order)
    return ids, attention_mask.gather(1, order)


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> right-padded (input_ids, attention_mask), both (B, T)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s, dtype=torch.long), 1
    return ids, mask


class RewardModel(nn.Module):
    """A HF sequence classifier read at the last real token. `label_index` picks the logit that means "good"
    (0 for a one-label reward model; e.g. the positive class of a sentiment classifier)."""

    def __init__(self, model: nn.Module, label_index: int = 0):
        super().__init__()
        self.model, self.label_index = model, label_index

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores (B,) of right-padded sequences (B, T)."""
        inner = inner_model(self.model)
        if hasattr(inner, "score"):  # decoder classifiers: a head on every position, read where the mask ends
            hidden = inner.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                      position_ids=position_ids(attention_mask)).last_hidden_state  # (B, T, H)
            last = last_index(attention_mask)  # (B,)
            logits = inner.score(hidden[torch.arange(len(last)), last])  # (B, L)
        else:  # encoder classifiers pool their first token themselves
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, L)
        return logits[:, self.label_index].float()


def label_index(model: nn.Module, label: int | str | None, field: str) -> int:
    """Which logit of `model` is the reward: `label` as an index or a label name; required above one label."""
    n, names = model.config.num_labels, dict(getattr(model.config, "label2id", None) or {})
    if label is None:
        if n != 1:
            raise ConfigError(f"{field}: the model has {n} labels {sorted(names, key=names.get)}; set "
                              f"{field}.label_index to the one that means a good response")
        return 0
    index = names.get(label) if isinstance(label, str) else label
    if index is None or not 0 <= index < n:
        raise ConfigError(f"{field}.label_index: {label!r} is not one of the model's {n} labels "
                          f"{sorted(names, key=names.get)}")
    return int(index)


def same_vocab(a, b) -> bool:
    """Do two tokenizers map text to the same ids (same vocabulary and EOS)? Then ids can be shared as they are."""
    return a is b or (a.eos_token_id == b.eos_token_id and len(a) == len(b) and a.get_vocab() == b.get_vocab())


class Scorer:
    """A frozen reward model with its own tokenizer, scoring a policy's samples.

    With the policy's tokenizer the rollout ids are scored as they are; with another tokenizer the texts are
    re-tokenised (`scored_ids`), with the scorer's chat template when it has one and the prompt's messages are
    known. Sequences longer than the scorer's context keep their last `max_positions` tokens (the score is read
    at the end); `truncated` counts them."""

    def __init__(self, model: nn.Module, tokenizer, policy_tokenizer, max_positions: int | None):
        self.model, self.tokenizer, self.max_positions = model, tokenizer, max_positions
        self.same = same_vocab(tokenizer, policy_tokenizer)
        self.truncated = 0

    def text_prompt(self, prompt: str, messages: list[dict] | None) -> str:
        if messages and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompts: list[str],
                 responses: list[str], ended: torch.Tensor, messages: list | None = None) -> torch.Tensor:
        """Scores (B,) of B samples: ids and mask (B, P + R) in the policy's tokens, or the texts."""
        if self.same:
            ids, mask = right_align(input_ids, attention_mask, self.tokenizer.pad_token_id)
            return self.model(ids, mask)
        messages = messages or [None] * len(prompts)
        seqs = [scored_ids(self.tokenizer, self.text_prompt(p, m), r, bool(e))
                for p, m, r, e in zip(prompts, messages, responses, ended)]
        if self.max_positions:
            self.truncated += sum(len(s) > self.max_positions for s in seqs)
            seqs = [s[-self.max_positions:] for s in seqs]
        return self.model(*pad_right(seqs, self.tokenizer.pad_token_id))


def load_scorer(spec: ScorerSpec, policy_tokenizer, field: str, wrap=lambda m: m, seed: int = 0) -> Scorer:
    """The frozen reward model `spec` names, with its own tokenizer, as a Scorer; `wrap` may shard the
    RewardModel (e.g. a ZeRO-3 inference engine). An `arch` spec builds a random one-label scorer (tests)."""
    if spec.arch is not None:
        torch.manual_seed(seed)
        model, tokenizer = reward_model(spec, policy_tokenizer, field), policy_tokenizer
    else:
        model, tokenizer = scorer_model(spec, field)
    index = label_index(model, spec.label_index, field)
    reward = RewardModel(fused_gelu(disable_dropout(model)), index).requires_grad_(False).eval()
    return Scorer(wrap(reward), tokenizer, policy_tokenizer, context_length(model))
