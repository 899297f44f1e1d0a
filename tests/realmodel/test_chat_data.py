"""The demo task as chat turns with SmolLM2's template: lengths count the template, truncation cuts content."""
from __future__ import annotations

import pytest

from components.config.loading import load_config
from components.data.prepare import prepare, read_split
from components.errors import DataError

SMALL = ["data.demo.n_sft_train=16", "data.demo.n_sft_eval=4", "data.demo.n_pref_train=16",
         "data.demo.n_pref_eval=4", "data.demo.n_eval_prompts=4"]


def _config(smollm2, *extra):
    return load_config("configs/smollm2.yaml", [f"data.demo.tokenizer={smollm2}", *SMALL, *extra])


def test_templated_prompt_length_is_counted_and_the_fit_suggested(smollm2, tmp_path):
    with pytest.raises(DataError) as err:
        prepare(_config(smollm2, "data.max_prompt_length=32").data, tmp_path / "data")
    message = str(err.value)
    assert "demo:sft_train:1:" in message and "templated prompt is" in message
    assert "of them the chat template" in message and "data.max_prompt_length=" in message
    fits = int(message.split("data.max_prompt_length=")[2].split(" ")[0])
    prepare(_config(smollm2, f"data.max_prompt_length={fits}").data, tmp_path / "fits")  # the suggestion works


def test_truncation_keeps_the_template_and_cuts_the_users_content(smollm2, smol_tokenizer, tmp_path):
    config = _config(smollm2, "data.max_prompt_length=36", "data.prompt_length_policy=truncate")
    prepare(config.data, tmp_path / "data")
    records = read_split(tmp_path / "data", "sft_train")
    assert any(not r["prompt_messages"][-1]["content"].startswith("Review of") for r in records)  # some were cut
    for record in records:
        ids = smol_tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]
        assert len(ids) <= 36
        assert record["prompt"].startswith("<|im_start|>system\n")  # the template's head survives
        assert record["prompt"].endswith("<|im_end|>\n<|im_start|>assistant\n")  # and its tail
        content = record["prompt_messages"][-1]["content"]
        assert content.endswith(":")  # cut from the start: the end of the user's content is kept
        assert f"user\n{content}<|im_end|>" in record["prompt"]
        assert record["completion"].endswith("<|im_end|>") and not record["completion"].endswith("\n")
