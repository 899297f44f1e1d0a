"""Each bad input gives one error naming the file and the line or field."""
import json

import pytest
import torch

from components.data.config import DataConfig, DatasetSource
from components.data.formats import PREFERENCE_FORMATS, SFT_FORMATS, to_records
from components.data.prepare import prepare
from components.data.sources import read_rows
from components.errors import DataError, ModelLoadError
from components.models.config import ModelSpec
from components.models.loading import causal_lm


def jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def records(path, allowed, tokenizer, fmt="auto"):
    return to_records(read_rows(DatasetSource(path=str(path), format=fmt), "/tmp"), fmt, allowed, tokenizer)


def test_malformed_jsonl_line(tmp_path, tokenizer):
    path = jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": "b"}, "", '{"prompt": "a", "completion": '])
    with pytest.raises(DataError, match=rf"^{path}:3: malformed JSON: Expecting value"):
        records(path, SFT_FORMATS, tokenizer)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_file_that_is_not_utf8_names_its_line(tmp_path, suffix):
    path = tmp_path / f"sft{suffix}"
    header = b"prompt,completion\n" if suffix == ".csv" else b""
    path.write_bytes(header + b'{"prompt": "a"}\n' + b"\x89PNG\r\n\x1a\n\x00\xff binary\n")
    with pytest.raises(DataError, match=rf"^{path}:{2 + bool(header)}: not UTF-8 text"):
        read_rows(DatasetSource(path=str(path)), "/tmp")


def test_a_file_that_is_not_parquet(tmp_path):
    path = tmp_path / "pref.parquet"
    path.write_bytes(b"\x00\x01 not parquet" * 8)
    with pytest.raises(DataError, match=rf"^{path}: not a readable parquet file"):
        read_rows(DatasetSource(path=str(path)), "/tmp")


def test_missing_column(tmp_path, tokenizer):
    path = jsonl(tmp_path / "pref.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "y"},
                                           {"prompt": "a", "chosen": "x", "rejected": ""}])
    with pytest.raises(DataError, match=rf"^{path}:2: missing column 'rejected' \(format preference\)"):
        records(path, PREFERENCE_FORMATS, tokenizer)
    path = jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "answer": "b"}])
    with pytest.raises(DataError, match=rf"^{path}:1: columns \['answer', 'prompt'\] match no accepted format"):
        records(path, SFT_FORMATS, tokenizer)
    with pytest.raises(DataError, match=rf"^{path}:1: missing column 'completion'"):
        records(path, SFT_FORMATS, tokenizer, fmt="prompt_completion")


def test_a_pair_whose_responses_are_the_same_names_its_line(tmp_path, tokenizer):
    path = jsonl(tmp_path / "pref.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "y"},
                                           {"prompt": "a", "chosen": "same ", "rejected": "same"}])
    with pytest.raises(DataError, match=rf"^{path}:2: 'chosen' and 'rejected' are the same response"):
        records(path, PREFERENCE_FORMATS, tokenizer)
    ranked = jsonl(tmp_path / "ranked.jsonl", [{"prompt": "a", "responses": ["x", "y", "x"]}])
    with pytest.raises(DataError, match=rf"^{ranked}:1: 'chosen' and 'rejected' are the same"):
        records(ranked, PREFERENCE_FORMATS, tokenizer)


def test_empty_split(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError, match=rf"^{path}: no rows: the split 'train' is empty"):
        read_rows(DatasetSource(path=str(path)), tmp_path)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: file not found"):
        read_rows(DatasetSource(path=str(tmp_path / "nope.jsonl")), tmp_path)
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match=r"unknown file type '.txt'"):
        read_rows(DatasetSource(path=str(tmp_path / "x.txt")), tmp_path)


def test_prompt_longer_than_the_policy_allows(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tok")
    long_prompt = "Review of " + "The Iron Summer " * 20 + ":"
    sft = jsonl(tmp_path / "sft.jsonl", [{"prompt": "Review of X:", "completion": " Great."},
                                         {"prompt": long_prompt, "completion": " Dull."}] * 3)
    pref = jsonl(tmp_path / "pref.jsonl", [{"prompt": "Review of X:", "chosen": " Great.", "rejected": " Dull."}] * 4)
    files = {"sft_train": {"path": str(sft)}, "preference_train": {"path": str(pref)}, "tokenizer": str(tmp_path / "tok")}
    config = DataConfig(source="files", files=files, max_prompt_length=16, max_length=32)
    with pytest.raises(DataError, match=rf"^{sft}:2: prompt is \d+ tokens, longer than data.max_prompt_length=16"):
        prepare(config, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "a failed data prep left an output behind"
    assert not list(tmp_path.glob(".out.tmp-*")), "a failed data prep left its temp dir behind"
    dropped = prepare(config.model_copy(update={"prompt_length_policy": "drop"}), tmp_path / "out")
    assert dropped.manifest["dropped_long_prompts"]["sft_train"] >= 2
    cut = prepare(config.model_copy(update={"prompt_length_policy": "truncate"}), tmp_path / "cut")
    assert sum(cut.manifest["counts"][k] for k in ("sft_train", "sft_eval")) == 6


def test_missing_model_path(tokenizer, tmp_path):
    with pytest.raises(ModelLoadError, match=r"^sft.model.name_or_path: model directory .*/no/such/model does not exist"):
        causal_lm(ModelSpec(name_or_path=str(tmp_path / "no/such/model")), tokenizer, field="sft.model")
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ModelLoadError, match="is a file; expected a save_pretrained directory"):
        causal_lm(ModelSpec(name_or_path=str(tmp_path / "weights.bin")), tokenizer, field="sft.model")


def test_pickled_weights_are_not_loaded(tokenizer, tmp_path):
    """A save_pretrained dir with only pytorch_model.bin (a pickle: loading it can run code) is refused."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=1, vocab_size=len(tokenizer)))
    model.config.save_pretrained(tmp_path / "pickled")
    torch.save(model.state_dict(), tmp_path / "pickled" / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"^ppo.model.name_or_path: cannot load .*safetensors"):
        causal_lm(ModelSpec(name_or_path=str(tmp_path / "pickled")), tokenizer, field="ppo.model")


def test_hub_id_offline_fails_with_the_field_named(tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"^reward.model.name_or_path: cannot load 'some-org/some-model'"):
        causal_lm(ModelSpec(name_or_path="some-org/some-model"), tokenizer, field="reward.model")
