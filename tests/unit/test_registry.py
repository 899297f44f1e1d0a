"""The stage registry: stage names are listed in one place and everything else derives from it; placement stays out
of every cache key; the RL core is the stages' shared library, not PPO's."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from components.config.loading import load_config
from components.config.pipeline import PipelineConfig
from components.config.stages import policy_stages, stage, stage_names, stages
from components.errors import ConfigError

ROOT = Path(__file__).parents[2]
CODE = ("components", "tasks", "flows", "rlhf")


def _sources(*folders: str):
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_stage_names_are_listed_in_the_registry_alone():
    """No tuple, list, set or dict literal outside the registry names two stages: every list of stages derives."""
    names = set(stage_names())
    found = []
    for path in _sources(*CODE):
        if path == ROOT / "components" / "config" / "stages.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
            if isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) and items:
                listed = {i.value for i in items if isinstance(i, ast.Constant) and i.value in names}
                if len(listed) >= 2:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {sorted(listed)}")
    assert not found, found


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", ["es", "evaluation", "feedback", "rl"])
def test_the_shared_rl_pieces_are_not_ppos(folder):
    """ES, the evaluation, the feedback and the RL core import generation, rewards and the driver from
    components.rl, never from components.ppo (at module level or inside a function)."""
    offending = {str(p.relative_to(ROOT)): sorted(n for n in _imported(p) if n.startswith("components.ppo"))
                 for p in _sources(f"components/{folder}")}
    assert not {k: v for k, v in offending.items() if v}


def test_one_per_rank_entry_point():
    """Every torchrun command in the code runs tasks.launchers.rank; the old entry points are gone."""
    assert not (ROOT / "components" / "launch.py").exists() and not (ROOT / "tasks" / "launched.py").exists()
    targets = []
    for path in _sources(*CODE):
        text = path.read_text()
        if "torch.distributed.run" in text:
            tree = ast.parse(text)
            targets += [n.elts[i + 1].value for n in ast.walk(tree) if isinstance(n, ast.List)
                        for i, e in enumerate(n.elts[:-1]) if isinstance(e, ast.Constant) and e.value == "-m"
                        and isinstance(n.elts[i + 1], ast.Constant) and n.elts[i + 1].value != "torch.distributed.run"]
    assert targets == ["tasks.launchers.rank"]


def test_the_pipeline_derives_from_the_registry():
    config = load_config("configs/demo.yaml", ["policies=[ppo, dpo, es]"])
    assert config.stages == stage_names() and policy_stages() == ("ppo", "dpo", "es")
    assert config.upstream("evaluate") == ("data", "sft", "reward", "ppo", "dpo", "es")
    assert config.upstream("dpo") == ("data", "sft")  # DPO learns from the pairs: no reward model in its key
    grpo = load_config("configs/grpo.yaml", ["ppo.rewards=[{function: 'components.data.gold:gold_scores'}]"])
    assert "reward" in load_config("configs/grpo.yaml").upstream("ppo")  # its rewards: the reward model's score
    assert "reward" not in grpo.upstream("ppo") and grpo.algorithm("ppo") == "grpo"  # a verifiable reward alone
    assert config.algorithm("dpo") == "dpo"
    schema = PipelineConfig.model_json_schema()["properties"]["policies"]
    assert schema["items"]["enum"] == ["ppo", "dpo", "es"]  # what the Prefect UI offers to pick from
    with pytest.raises(ConfigError, match=r"policies: .*\['sft'\] are not policy stages"):
        load_config(None, ["policies=[sft]"])


def test_deployments_and_stage_flows_derive_from_the_registry():
    from rlhf.prefect_yaml import render

    deployments = {d["name"]: d for d in render("configs/demo.yaml")["deployments"]}
    adhoc = {name.removesuffix("-adhoc") for name in deployments if name.endswith("-adhoc")}
    assert adhoc == {s.name for s in stages() if s.has_flow} | {"feedback"}
    assert all(deployments[f"{s.name}-adhoc"]["work_pool"]["name"] == ("gpu" if s.trains else "cpu")
               for s in stages() if s.has_flow)
    assert yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"] == list(deployments.values())


def test_placement_is_validated_and_never_in_a_cache_key():
    from tasks.runner import _hash

    placed = load_config("configs/demo.yaml", ["placement.sft.num_processes=2", "placement.sft.work_pool=gpu",
                                               "placement.ppo.concurrency_limit=gpu"])
    plain = load_config("configs/demo.yaml")
    assert placed.placement_of("sft").resolved_launcher == "torchrun"
    assert plain.placement_of("sft").resolved_launcher == "in_process"
    for name in ("sft", "ppo"):
        settings = stage(name).settings_of(placed)
        assert _hash(placed.section(name), settings) == _hash(plain.section(name), settings)
        assert "placement" not in placed.section(name).model_dump() and "work_pool" not in str(placed.section(name))
    with pytest.raises(ConfigError, match="num_processes=2 needs launcher: torchrun"):
        load_config(None, ["placement.sft.num_processes=2", "placement.sft.launcher=in_process"])
    with pytest.raises(ConfigError, match="evaluate: only training stages are placed"):
        load_config(None, ["placement.evaluate.num_processes=2"])
    with pytest.raises(ConfigError, match="nope: no such stage"):
        load_config(None, ["placement.nope.num_processes=2"])
    one = load_config(None, ["placement.sft.launcher=torchrun"])  # one rank in a process of its own
    assert one.placement_of("sft").resolved_launcher == "torchrun"


def test_a_stage_request_crosses_a_process_boundary_as_json(tmp_path):
    from components.stage import inputs_for
    from tasks.launchers.request import StageRequest

    config = load_config("configs/demo.yaml", ["reward.feedback=[s3://b/feedback/1]", "reward.lr=3e-4"])
    inputs = inputs_for("reward", config, {"data": tmp_path / "d", "sft": tmp_path / "s"}, [tmp_path / "f"])
    assert inputs.settings == {"data.max_length": 64} and inputs.max_length == 64
    request = StageRequest.of("reward", config, inputs, tmp_path / "out")
    again = StageRequest.from_json(request.to_json())
    assert again == request and again.config.lr == 3e-4 and again.entry == "components.reward.train:run"
