"""The parameters the Prefect UI shows and sends: presets, overrides, the feedback dataset, the feedback form."""
from __future__ import annotations

import typing
from pathlib import Path

import pytest

from components.config.loading import load_config
from components.errors import ConfigError
from flows.forms import answers, feedback_form
from flows.pipeline import Preset
from tasks.context import resolve_config


def test_presets_are_the_config_files():
    assert set(typing.get_args(Preset)) == {p.stem for p in Path("configs").glob("*.yaml")}


def test_preset_then_overrides_then_feedback():
    demo = load_config("configs/demo.yaml")
    config = resolve_config(demo, "tiny", ["ppo.iterations=3", "sft.lr=2e-5"], "s3://b/feedback/abc")
    assert config.name == load_config("configs/tiny.yaml").name and config.ppo.iterations == 3
    assert config.sft.lr == 2e-5 and config.reward.feedback == ["s3://b/feedback/abc"]
    assert resolve_config(config, feedback_uri="s3://b/feedback/abc").reward.feedback == ["s3://b/feedback/abc"]
    assert resolve_config(demo) == demo


def test_a_bad_override_names_the_field():
    with pytest.raises(ConfigError, match=r"ppo\.iterations") as err:
        resolve_config(load_config("configs/demo.yaml"), overrides=["ppo.iterations=0"])
    assert "greater than or equal to 1" in str(err.value)


def test_the_feedback_form_shows_each_pair_and_maps_answers_back():
    pairs = [{"pair": 0, "prompt": "<|im_start|>user\nHi *there*", "response_a": "a  b", "response_b": "c"},
             {"pair": 1, "prompt": "p", "response_a": "x", "response_b": "y"}]
    form = feedback_form(pairs)
    fields = form.model_json_schema()["properties"]
    assert list(fields) == ["pair_1", "pair_1_score", "pair_2", "pair_2_score"]
    assert fields["pair_1"]["title"] == "Pair 1 of 2" and fields["pair_1"]["enum"] == ["A", "B", "tie", "skip"]
    # chat tokens and markdown characters are shown as text, not taken for HTML or emphasis
    assert r"**Prompt:** \<|im\_start|\>user Hi \*there\*" in fields["pair_1"]["description"]
    assert "**A:** a b\n" in fields["pair_1"]["description"] and "**B:** c\n" in fields["pair_1"]["description"]
    assert fields["pair_2_score"]["enum"] == ["none", "1", "2", "3", "4", "5"]
    filled = form(pair_1="B", pair_1_score="5", pair_2="tie")
    assert answers(filled, pairs) == [{"pair": 0, "choice": "B", "score": 5}, {"pair": 1, "choice": "tie", "score": None}]
    assert answers(form(), pairs)[0] == {"pair": 0, "choice": "skip", "score": None}
