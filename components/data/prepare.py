"""The data prep stage: standard JSONL splits + tokenizer + manifest.json, written atomically.

Output layout (the contract every later stage reads):
    sft_train.jsonl sft_eval.jsonl            {"prompt", "completion"}
    preference_train.jsonl preference_eval.jsonl  {"prompt", "chosen", "rejected"}
    eval_prompts.jsonl                        {"prompt"}
    tokenizer/                                save_pretrained tokenizer
    manifest.json                             source, seed, counts, tokenizer hash, file hashes (written last)
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from components.data import demo
from components.data.config import DataConfig, DatasetSource
from components.data.formats import PREFERENCE_FORMATS, SFT_FORMATS, render_chat, to_records
from components.data.manifest import read_manifest, tree_sha256, write_manifest
from components.data.sources import Rows, read_rows
from components.data.tokenizer import train_bpe
from components.errors import DataError
from components.io.atomic import atomic_dir
from components.models.loading import load_tokenizer

SPLITS = ("sft_train", "sft_eval", "preference_train", "preference_eval", "eval_prompts")
_ALL_FORMATS = SFT_FORMATS + PREFERENCE_FORMATS + ("prompt",)


@dataclass
class PreparedData:
    path: Path
    fingerprint: str
    manifest: dict


def prepare(config: DataConfig, out_dir: str | Path) -> PreparedData:
    """Run data prep into `out_dir`; nothing appears there unless every split is valid and written."""
    with atomic_dir(out_dir) as tmp:
        if config.source == "demo":
            splits, tokenizer, info = _demo(config)
        else:
            splits, tokenizer, info = _files(config)
        for name in SPLITS:
            if not splits[name]:
                raise DataError(name, "split is empty after filtering")
            write_jsonl(tmp / f"{name}.jsonl", splits[name])
        tokenizer.save_pretrained(tmp / "tokenizer")
        info.update(seed=config.seed, counts={k: len(v) for k, v in splits.items()},
                    tokenizer_hash=tree_sha256(tmp / "tokenizer"), config=config.model_dump(mode="json", exclude={"cache_dir"}))
        fingerprint = write_manifest(tmp, info)
    manifest, _ = read_manifest(out_dir, verify=False)
    return PreparedData(Path(out_dir), fingerprint, manifest)


def _demo(config: DataConfig):
    d, rng = config.demo, random.Random(config.seed)
    splits = {
        "sft_train": demo.sft_examples(rng, d.n_sft_train, held_out=False),
        "sft_eval": demo.sft_examples(rng, d.n_sft_eval, held_out=True),
        "preference_train": demo.preference_pairs(rng, d.n_pref_train, held_out=False, label_noise=d.label_noise),
        "preference_eval": demo.preference_pairs(rng, d.n_pref_eval, held_out=True, label_noise=0.0),
        "eval_prompts": demo.eval_prompts(rng, d.n_eval_prompts),
    }
    if d.tokenizer:  # a pretrained model's tokenizer (and chat template)
        tokenizer = load_tokenizer(d.tokenizer, field="data.demo.tokenizer", cache_dir=config.cache_dir)
    else:
        corpus = [r["prompt"] + r["completion"] for r in splits["sft_train"]]
        corpus += [r["prompt"] + r[k] for r in splits["preference_train"] for k in ("chosen", "rejected")]
        tokenizer = train_bpe(corpus, d.vocab_size)
    numbered, dropped = {}, {}
    for name in SPLITS:
        numbered[name] = list(enumerate(splits[name], start=1))
        if d.chat:  # through the same TRL-format reader as users' files
            rows = Rows(f"demo:{name}", demo.as_chat(splits[name]), [n for n, _ in numbered[name]])
            numbered[name] = to_records(rows, "auto", _ALL_FORMATS, tokenizer)
    longest = max(_n_tokens(tokenizer, r["prompt"]) for records in numbered.values() for _, r in records)
    for name in SPLITS:
        splits[name], dropped[name] = _check_prompts(numbered[name], f"demo:{name}", tokenizer, config, longest)
    return splits, tokenizer, {"source": "demo", "label_noise": d.label_noise, "dropped_long_prompts": dropped}


def _files(config: DataConfig):
    f, dropped = config.files, {}
    tokenizer = load_tokenizer(f.tokenizer, field="data.files.tokenizer", cache_dir=config.cache_dir)
    rng = random.Random(config.seed)

    def read(name: str, source: DatasetSource, allowed: tuple[str, ...]) -> list[dict]:
        rows = read_rows(source, config.cache_dir)
        records, dropped[name] = _check_prompts(to_records(rows, source.format, allowed, tokenizer),
                                                rows.name, tokenizer, config)
        return records

    sft_train = read("sft_train", f.sft_train, SFT_FORMATS)
    pref_train = read("preference_train", f.preference_train, PREFERENCE_FORMATS)
    if f.sft_eval:
        sft_eval = read("sft_eval", f.sft_eval, SFT_FORMATS)
    else:
        sft_train, sft_eval = _hold_out(sft_train, rng)
    if f.preference_eval:
        pref_eval = read("preference_eval", f.preference_eval, PREFERENCE_FORMATS)
    else:
        pref_train, pref_eval = _hold_out(pref_train, rng)
    prompts = read("eval_prompts", f.eval_prompts, _ALL_FORMATS) if f.eval_prompts else sft_eval
    splits = {"sft_train": sft_train, "sft_eval": sft_eval, "preference_train": pref_train,
              "preference_eval": pref_eval,
              "eval_prompts": [{k: r[k] for k in ("prompt", "prompt_messages") if k in r} for r in prompts]}
    sources = {k: v.path for k, v in f if isinstance(v, DatasetSource)}
    return splits, tokenizer, {"source": "files", "sources": sources, "tokenizer": f.tokenizer,
                               "dropped_long_prompts": dropped}


def _hold_out(records: list[dict], rng: random.Random, fraction: float = 0.05) -> tuple[list[dict], list[dict]]:
    """Split off a seeded `fraction` (at least one record) as the held-out split."""
    if len(records) < 2:
        raise DataError("data", f"{len(records)} record(s): too few to hold out an eval split; give one explicitly")
    order = list(range(len(records)))
    rng.shuffle(order)
    n_eval = max(1, int(len(records) * fraction))
    return [records[i] for i in order[n_eval:]], [records[i] for i in order[:n_eval]]


def _check_prompts(numbered: list[tuple[int, dict]], name: str, tokenizer, config: DataConfig,
                   longest: int | None = None):
    """Apply `prompt_length_policy` to prompts over `max_prompt_length` tokens, counted as the model sees them
    (with the chat template's tokens). Truncation keeps the end of the last user message and the whole template.
    `longest` (every split's longest prompt) is what the error suggests; default: this source's. Returns
    (records, n_dropped)."""
    limit, policy = config.max_prompt_length, config.prompt_length_policy
    lengths = [_n_tokens(tokenizer, r["prompt"]) for _, r in numbered]
    scope = "of the dataset" if longest else "of this file"
    longest = longest or max(lengths, default=0)
    if policy == "error" and max(lengths, default=0) > limit:
        line, record = next(numbered[i] for i, n in enumerate(lengths) if n > limit)
        n, messages = _n_tokens(tokenizer, record["prompt"]), record.get("prompt_messages")
        what = (f"templated prompt is {n} tokens ({_template_tokens(tokenizer, messages)} of them the chat "
                "template)" if messages else f"prompt is {n} tokens")
        raise DataError(name, f"{what}, longer than data.max_prompt_length={limit}; data.max_prompt_length="
                              f"{longest} fits every prompt {scope} (or set data.prompt_length_policy "
                              "to 'truncate' or 'drop')", line)
    out, dropped = [], 0
    for (line, record), n in zip(numbered, lengths):
        if n > limit and policy == "drop":
            dropped += 1
            continue
        if n > limit:
            record = _truncate(tokenizer, record, limit, name, line)
        out.append(record)
    return out, dropped


def _n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _template_tokens(tokenizer, messages: list[dict]) -> int:
    """Tokens the chat template adds around the messages' contents."""
    empty = [{**m, "content": ""} for m in messages]
    return _n_tokens(tokenizer, render_chat(tokenizer, empty, add_generation_prompt=True))


def _truncate(tokenizer, record: dict, limit: int, name: str, line: int) -> dict:
    """The record with its prompt cut to `limit` tokens: a plain prompt keeps its last tokens; a templated one
    keeps the template and the end of its last user message's content."""
    messages = record.get("prompt_messages")
    if not messages:
        ids = tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
        return {**record, "prompt": tokenizer.decode(ids[-limit:])}
    at = max(i for i, m in enumerate(messages) if m["role"] == "user") if any(
        m["role"] == "user" for m in messages) else len(messages) - 1
    content = tokenizer(messages[at]["content"], add_special_tokens=False)["input_ids"]
    keep = len(content) - (_n_tokens(tokenizer, record["prompt"]) - limit)
    while keep > 0:
        cut = [*messages[:at], {**messages[at], "content": tokenizer.decode(content[-keep:])}, *messages[at + 1:]]
        prompt = render_chat(tokenizer, cut, add_generation_prompt=True)
        if _n_tokens(tokenizer, prompt) <= limit:
            return {**record, "prompt": prompt, "prompt_messages": cut}
        keep -= 1
    raise DataError(name, f"the chat template alone is {_template_tokens(tokenizer, messages)} tokens, over "
                          f"data.max_prompt_length={limit}: no content fits; raise data.max_prompt_length", line)


def write_jsonl(path: str | Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def read_split(data_dir: str | Path, name: str) -> list[dict]:
    """Records of one standard split written by `prepare`."""
    if name not in SPLITS:
        raise ValueError(f"unknown split {name!r}; one of {SPLITS}")
    with open(Path(data_dir) / f"{name}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_data_tokenizer(data_dir: str | Path):
    """The tokenizer data prep wrote (trained for the demo, or the configured one)."""
    return load_tokenizer(str(Path(data_dir) / "tokenizer"), field="data tokenizer")
