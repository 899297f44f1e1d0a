"""Turn rows in any of TRL's dataset formats into the pipeline's standard records.

Standard records: SFT `{"prompt", "completion"}`, preference `{"prompt", "chosen", "rejected"}`,
evaluation `{"prompt"}`. Accepted inputs (TRL's names):
- prompt_completion: `prompt`, `completion` (strings, or lists of chat messages)
- messages: conversational language modelling; the last message is the assistant's completion
- preference: `prompt`, `chosen`, `rejected` (strings or message lists)
- hh: Anthropic-HH full texts `chosen`, `rejected`; the prompt is their text up to the last "\n\nAssistant:"
- ranking: `prompt`, `responses` ranked best first; K responses expand to K*(K-1)/2 pairs
"""
from __future__ import annotations

from itertools import combinations
from typing import Any

from components.data.sources import Rows
from components.errors import DataError

_COLUMNS = {
    "prompt_completion": ("prompt", "completion"), "messages": ("messages",),
    "preference": ("prompt", "chosen", "rejected"), "hh": ("chosen", "rejected"),
    "ranking": ("prompt", "responses"), "prompt": ("prompt",),
}
SFT_FORMATS = ("prompt_completion", "messages")
PREFERENCE_FORMATS = ("preference", "hh", "ranking")
HH_ASSISTANT = "\n\nAssistant:"


def detect_format(row: dict[str, Any]) -> str | None:
    """The TRL format whose columns `row` has, most specific first."""
    for fmt in ("messages", "ranking", "preference", "hh", "prompt_completion", "prompt"):
        if all(c in row for c in _COLUMNS[fmt]):
            return fmt
    return None


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """Apply the tokenizer's chat template; without one, a plain `role: content` transcript."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
    return text + ("assistant:" if add_generation_prompt else "")


def expand_ranking(prompt: str, responses: list[str]) -> list[dict[str, str]]:
    """K ranked responses (best first) -> every ordered pair (i < j) as chosen=responses[i]."""
    return [{"prompt": prompt, "chosen": a, "rejected": b} for a, b in combinations(responses, 2)]


def to_records(rows: Rows, fmt: str, allowed: tuple[str, ...], tokenizer) -> list[tuple[int, dict[str, str]]]:
    """Normalise every row of `rows` to standard records of the kind `allowed` describes, as (line, record)."""
    out: list[tuple[int, dict[str, str]]] = []
    for row, line in zip(rows.rows, rows.lines):
        found = detect_format(row) if fmt == "auto" else fmt
        if found is None or found not in allowed:
            want = " or ".join(f"{f} ({', '.join(_COLUMNS[f])})" for f in allowed)
            raise DataError(rows.name, f"columns {sorted(row)} match no accepted format; expected {want}", line)
        missing = [c for c in _COLUMNS[found] if row.get(c) in (None, "")]
        if missing:
            raise DataError(rows.name, f"missing column '{missing[0]}' (format {found})", line)
        out.extend((line, check_pair(r, rows.name, line)) for r in _CONVERT[found](row, tokenizer, rows.name, line))
    return out


def check_pair(record: dict, name: str, line: int) -> dict:
    """A preference record whose two responses are the same teaches nothing (and is a labelling slip): an error
    naming the file and line. Other records pass through."""
    if "chosen" in record and record["chosen"].strip() == record["rejected"].strip():
        raise DataError(name, "'chosen' and 'rejected' are the same response; a preference pair must differ", line)
    return record


def _text_or_chat(value: Any, tokenizer, name: str, line: int, column: str) -> str | list[dict]:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in value):
        return value
    raise DataError(name, f"column '{column}' must be a string or a list of {{role, content}} messages", line)


def _split_chat(prompt: str | list, completion: str | list, tokenizer, name: str, line: int) -> tuple[str, str]:
    """Render a conversational prompt/completion to text; strings pass through."""
    if isinstance(prompt, str) and isinstance(completion, str):
        return prompt, completion
    if isinstance(prompt, str) or isinstance(completion, str):
        raise DataError(name, "prompt and completion must both be strings or both message lists", line)
    head = render_chat(tokenizer, prompt, add_generation_prompt=True)
    full = render_chat(tokenizer, prompt + completion, add_generation_prompt=False)
    if not full.startswith(head):
        raise DataError(name, "the chat template does not render the prompt as a prefix of the conversation", line)
    return head, end_at_eos(full[len(head):], tokenizer)


def end_at_eos(completion: str, tokenizer) -> str:
    """The completion up to its closing EOS: a template's text after the turn's end (SmolLM2's '\n' after
    <|im_end|>) is never generated (generation stops at EOS), so it is neither trained on nor scored."""
    eos = tokenizer.eos_token
    stripped = completion.rstrip()
    return stripped if eos and stripped.endswith(eos) else completion


def _prompt_completion(row, tok, name, line):
    p = _text_or_chat(row["prompt"], tok, name, line, "prompt")
    c = _text_or_chat(row["completion"], tok, name, line, "completion")
    prompt, completion = _split_chat(p, c, tok, name, line)
    return [_with_messages({"prompt": prompt, "completion": completion}, p)]


def _with_messages(record: dict, prompt) -> dict:
    """Keep a conversational prompt's messages beside its rendered text: a scorer with its own chat template
    renders them, and length limits cut a message's content, never the template."""
    return {**record, "prompt_messages": prompt} if isinstance(prompt, list) else record


def _messages(row, tok, name, line):
    msgs = _text_or_chat(row["messages"], tok, name, line, "messages")
    if isinstance(msgs, str) or msgs[-1]["role"] != "assistant" or len(msgs) < 2:
        raise DataError(name, "'messages' needs at least two messages, the last from the assistant", line)
    prompt, completion = _split_chat(msgs[:-1], msgs[-1:], tok, name, line)
    return [_with_messages({"prompt": prompt, "completion": completion}, msgs[:-1])]


def _preference(row, tok, name, line):
    p = _text_or_chat(row["prompt"], tok, name, line, "prompt")
    ch = _text_or_chat(row["chosen"], tok, name, line, "chosen")
    rj = _text_or_chat(row["rejected"], tok, name, line, "rejected")
    prompt, chosen = _split_chat(p, ch, tok, name, line)
    _, rejected = _split_chat(p, rj, tok, name, line)
    return [_with_messages({"prompt": prompt, "chosen": chosen, "rejected": rejected}, p)]


def _hh(row, tok, name, line):
    chosen, rejected = row["chosen"], row["rejected"]
    if not (isinstance(chosen, str) and isinstance(rejected, str)):
        raise DataError(name, "HH format needs 'chosen' and 'rejected' as full-text strings", line)
    cut = chosen.rfind(HH_ASSISTANT)
    if cut < 0:
        raise DataError(name, f"HH format: 'chosen' has no {HH_ASSISTANT!r} turn to split the prompt at", line)
    prompt = chosen[:cut + len(HH_ASSISTANT)]
    if not rejected.startswith(prompt):
        raise DataError(name, "HH format: 'chosen' and 'rejected' do not share the prompt", line)
    return [{"prompt": prompt, "chosen": chosen[len(prompt):], "rejected": rejected[len(prompt):]}]


def _ranking(row, tok, name, line):
    responses = row["responses"]
    if not (isinstance(responses, list) and len(responses) >= 2 and all(isinstance(r, str) for r in responses)):
        raise DataError(name, "'responses' must be a list of at least 2 strings, best first", line)
    return expand_ranking(row["prompt"], responses)


def _prompt(row, tok, name, line):
    p = _text_or_chat(row["prompt"], tok, name, line, "prompt")
    return [_with_messages({"prompt": p if isinstance(p, str) else render_chat(tok, p, add_generation_prompt=True)}, p)]


_CONVERT = {"prompt_completion": _prompt_completion, "messages": _messages, "preference": _preference,
            "hh": _hh, "ranking": _ranking, "prompt": _prompt}
