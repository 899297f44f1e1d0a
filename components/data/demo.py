"""The demo task: short movie reviews of mixed sentiment and quality, generated from a seed.

Prompts read "Review of <title>:"; completions are 1-3 template sentences. A completion's sentiment
target is drawn uniformly from positive / negative / mixed / neutral, and some completions carry faults
(a repeated word, a truncated last sentence) so that the gold scorer has quality to judge, not only tone.
Evaluation prompts use title combinations never seen in training.
"""
from __future__ import annotations

import random

from components.data.gold import gold_score

_FIRST = """Silent Midnight Golden Broken Hidden Last Crimson Distant Paper Iron Winter Electric Quiet Burning
Lonely Secret Wild Forgotten Silver Endless""".split()
_SECOND = """Harbor Garden River Empire Letter Kingdom Station Mirror Forest Promise Island Signal Orchard Voyage
Tower Machine Carnival Summer Horizon Lantern""".split()
ASPECTS = "acting story music ending pacing cast dialogue plot characters soundtrack script camera".split()
NOUNS = "film movie show".split()
ADJ = {
    "pos": "great wonderful brilliant moving beautiful excellent charming delightful superb fun gripping clever".split(),
    "neg": "boring awful dull terrible weak messy bland painful poor clumsy tedious predictable".split(),
    "neu": "long short simple loud quiet strange familiar slow".split(),
}
VERBS = {"pos": "loved enjoyed liked adored".split(), "neg": "hated disliked regretted".split(),
         "neu": "watched finished saw".split()}
_OPPOSITE = {"pos": "neg", "neg": "pos", "neu": "neu"}
_MOODS = {"positive": ["pos"], "negative": ["neg"], "mixed": ["pos", "neg"], "neutral": ["neu"]}


def titles(rng: random.Random, held_out: bool) -> list[str]:
    """Train and eval titles are disjoint combinations (one in five is held out), but every word of an eval
    title also occurs in training titles, so no eval token has an untrained embedding."""
    return [f"The {a} {b}" for i, a in enumerate(_FIRST) for j, b in enumerate(_SECOND)
            if ((i + j) % 5 == 0) == held_out]


def prompt_for(title: str) -> str:
    return f"Review of {title}:"


def _sentence(rng: random.Random, tone: str) -> str:
    kind = rng.randrange(6)
    adj, aspect, noun = rng.choice(ADJ[tone]), rng.choice(ASPECTS), rng.choice(NOUNS)
    if kind == 0:
        return f"The {aspect} was {adj}."
    if kind == 1:
        return f"I {rng.choice(VERBS[tone])} this {noun}."
    if kind == 2:
        return f"It is a {adj} {noun}."
    if kind == 3:  # negated opposite: "not boring" reads positive
        return f"The {aspect} was not {rng.choice(ADJ[_OPPOSITE[tone]])}."
    if kind == 4 and tone != "neu":
        return "I would recommend it." if tone == "pos" else "I would not recommend it."
    return f"The {aspect} felt {adj}."


def completion(rng: random.Random) -> str:
    """One review body with a leading space, so that prompt + completion reads naturally."""
    tones = _MOODS[rng.choice(list(_MOODS))]
    text = " ".join(_sentence(rng, rng.choice(tones)) for _ in range(rng.randint(1, 3)))
    fault = rng.random()
    if fault < 0.15:  # stutter: one word said three times
        ws = text.split()
        i = rng.randrange(len(ws))
        ws[i:i + 1] = [ws[i].rstrip(".")] * 2 + [ws[i]]
        text = " ".join(ws)
    elif fault < 0.30:  # unfinished: cut inside the last sentence
        ws = text.rstrip(".").split()
        text = " ".join(ws[:max(1, len(ws) - rng.randint(1, 2))])
    return " " + text


def sft_examples(rng: random.Random, n: int, held_out: bool) -> list[dict]:
    names = titles(rng, held_out)
    return [{"prompt": prompt_for(rng.choice(names)), "completion": completion(rng)} for _ in range(n)]


def preference_pairs(rng: random.Random, n: int, held_out: bool, label_noise: float) -> list[dict]:
    """Pairs of completions to one prompt; chosen has the higher gold score (gap >= 1), then noise flips."""
    names, pairs = titles(rng, held_out), []
    while len(pairs) < n:
        a, b = completion(rng), completion(rng)
        ga, gb = gold_score(a), gold_score(b)
        if abs(ga - gb) < 1.0:
            continue
        chosen, rejected = (a, b) if ga > gb else (b, a)
        if rng.random() < label_noise:
            chosen, rejected = rejected, chosen
        pairs.append({"prompt": prompt_for(rng.choice(names)), "chosen": chosen, "rejected": rejected})
    return pairs


def eval_prompts(rng: random.Random, n: int) -> list[dict]:
    names = titles(rng, held_out=True)
    return [{"prompt": prompt_for(names[i % len(names)])} for i in rng.sample(range(10 * n), n)]


def as_chat(records: list[dict]) -> list[dict]:
    """The same records in TRL's conversational format: the prompt as a user turn, each response (completion,
    chosen, rejected) as an assistant turn."""
    rows = []
    for r in records:
        row = {"prompt": [{"role": "user", "content": r["prompt"].strip()}]}
        for key in ("completion", "chosen", "rejected"):
            if key in r:
                row[key] = [{"role": "assistant", "content": r[key].strip()}]
        rows.append(row)
    return rows
