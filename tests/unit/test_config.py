import textwrap

import pytest

from components.config.loading import load_config, parse_overrides
from components.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_demo_config_is_valid():
    config = load_config("configs/demo.yaml")
    assert config.data.source == "demo" and config.sft.model.arch.n_layer == 2


def test_bad_value_names_file_line_and_field(tmp_path):
    path = write(tmp_path, """\
        name: x
        sft:
          epochs: 1
          lr: -1.0
        """)
    with pytest.raises(ConfigError, match=rf"{path}:4: sft.lr: Input should be greater than 0"):
        load_config(path)


def test_unknown_key_is_an_error(tmp_path):
    path = write(tmp_path, "reward:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: reward.learning_rate: Extra inputs are not permitted"):
        load_config(path)


def test_cross_field_checks_raise(tmp_path):
    path = write(tmp_path, "sft:\n  compute:\n    zero_stage: 2\n    offload_param: true\n")
    with pytest.raises(ConfigError, match=r"sft.compute: Value error, offload_param needs zero_stage 3"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"ppo.compute: Value error, precision bf16-true needs zero_stage 0, got "
                                          r"zero_stage 2"):
        load_config(None, ["ppo.compute.precision=bf16-true", "ppo.compute.zero_stage=2"])
    with pytest.raises(ConfigError, match="max_prompt_length=64 leaves no room under max_length=64"):
        load_config(None, ["data.max_prompt_length=64"])
    with pytest.raises(ConfigError, match="set exactly one of name_or_path or arch"):
        load_config(None, ["sft.model.name_or_path=gpt2", "sft.model.arch.n_layer=2"])
    with pytest.raises(ConfigError, match="hidden_size=100 is not divisible by n_head=3"):
        load_config(None, ["sft.model.arch.hidden_size=100", "sft.model.arch.n_head=3"])
    with pytest.raises(ConfigError, match="max_positions=32 is shorter than data.max_length=64"):
        load_config(None, ["sft.model.arch.max_positions=32"])


def test_overrides_are_typed_and_named_in_errors():
    assert parse_overrides(["sft.lr=0.5", "reward.model=null", "name=abc", "sft.epochs=3"]) == {
        ("sft", "lr"): 0.5, ("reward", "model"): None, ("name",): "abc", ("sft", "epochs"): 3}
    config = load_config("configs/demo.yaml", ["sft.lr=2e-5", "sft.compute.zero_stage=3"])
    assert config.sft.lr == 2e-5 and config.sft.compute.zero_stage == 3
    with pytest.raises(ConfigError, match=r"--set sft.compute.zero_stage: sft.compute.zero_stage: Input should be 0, 1, 2 or 3"):
        load_config("configs/demo.yaml", ["sft.compute.zero_stage=4"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["sft.lr"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "sft: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: a\nsft:\n  lr: \xff\xfe\n")
    with pytest.raises(ConfigError, match=rf"^{binary}:3: not UTF-8 text"):
        load_config(binary)


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    path = write(tmp_path, """\
        sft:
          lr: 0.1
          epochs: 1
          lr: 0.2
        """)
    with pytest.raises(ConfigError, match=rf"^{path}:4: sft.lr: duplicate key \(first given on line 2\)"):
        load_config(path)


@pytest.mark.parametrize("field", ["s3_endpoint_url", "output_dir", "ppo.model.name_or_path"])
def test_credentials_inside_a_url_are_rejected_without_echoing_them(field):
    with pytest.raises(ConfigError) as error:
        load_config("configs/tiny.yaml", [f"{field}=http://alice:planted-secret@minio.local:9000"])
    assert f"{field}: credentials inside a URL are not accepted" in str(error.value)
    assert "planted-secret" not in str(error.value)


def test_every_field_has_a_description():
    from components.config.base import StrictModel
    from components.config.pipeline import PipelineConfig

    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            for arg in getattr(field.annotation, "__args__", (field.annotation,)):
                if isinstance(arg, type) and issubclass(arg, StrictModel):
                    walk(arg)
    walk(PipelineConfig)


FILES = ["data.source=files", "data.files.sft_train.path=s.jsonl", "data.files.preference_train.path=p.jsonl",
         "data.files.tokenizer=tok"]


def test_promotion_metric_follows_the_gold_scorer_that_exists(tmp_path):
    """With your own data there is no demo gold scorer: the gate compares the reward model's score, and asking
    for gold fails at validation (it once crashed with KeyError after 14 minutes of training)."""
    assert load_config("configs/demo.yaml").promotion_metric == "gold_mean"
    assert load_config(None, FILES).promotion_metric == "score_mean"
    with pytest.raises(ConfigError, match="promotion.metric: gold_mean needs a gold scorer"):
        load_config(None, [*FILES, "promotion.metric=gold_mean"])
    own = load_config(None, [*FILES, "evaluate.gold_fn=components.data.gold:gold_scores"])
    assert own.promotion_metric == "gold_mean" and own.gold_fn == "components.data.gold:gold_scores"


def test_a_gold_fn_that_cannot_be_imported_names_its_line(tmp_path):
    path = write(tmp_path, "evaluate:\n  samples_per_prompt: 2\n  gold_fn: no_such_module:score\n")
    with pytest.raises(ConfigError, match=rf"{path}:3: evaluate.gold_fn: .*cannot import module 'no_such_module'"):
        load_config(path)
    with pytest.raises(ConfigError, match="is not of the form module:function"):
        load_config(None, ["evaluate.gold_fn=just_a_name"])
    with pytest.raises(ConfigError, match="has no 'nope'"):
        load_config(None, ["evaluate.gold_fn=components.data.gold:nope"])


def test_lora_has_one_shape_on_every_training_stage():
    config = load_config(None, ["sft.lora.r=4", "reward.lora.r=4", "ppo.lora.r=4", "sft.compute.gradient_checkpointing=true"])
    assert type(config.sft.lora) is type(config.reward.lora) is type(config.ppo.lora)
    assert config.sft.compute.gradient_checkpointing


def test_a_missing_local_model_is_named_before_any_work(tmp_path):
    from components.config.pipeline import check_local_models

    config = load_config("configs/tiny.yaml", [f"ppo.model.name_or_path={tmp_path}/nope", "data.demo.tokenizer=./t.gguf",
                                               "reward.model.name_or_path=HuggingFaceTB/SmolLM2-135M"])
    with pytest.raises(ConfigError) as error:  # the hub id is resolved when loaded, not here
        check_local_models(config)
    assert str(error.value).splitlines()[1:] == ["  data.demo.tokenizer: ./t.gguf",
                                                 f"  ppo.model.name_or_path: {tmp_path}/nope"]
    (tmp_path / "nope").mkdir()
    check_local_models(load_config("configs/tiny.yaml", [f"ppo.model.name_or_path={tmp_path}/nope"]))
