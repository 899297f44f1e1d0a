import json

import pytest

from components.data.config import DataConfig
from components.data.manifest import read_manifest, write_manifest
from components.data.prepare import prepare, read_split
from components.errors import DataError
from components.io.atomic import atomic_dir

SMALL = {"n_sft_train": 60, "n_sft_eval": 10, "n_pref_train": 60, "n_pref_eval": 10, "n_eval_prompts": 5,
         "vocab_size": 400}


def test_fingerprint_is_stable_and_tracks_content(tmp_path):
    config = DataConfig(demo=SMALL)
    a, b = prepare(config, tmp_path / "a"), prepare(config, tmp_path / "b")
    assert a.fingerprint == b.fingerprint
    assert a.manifest["counts"]["sft_train"] == 60 and a.manifest["tokenizer_hash"]
    assert prepare(config.model_copy(update={"seed": 1}), tmp_path / "c").fingerprint != a.fingerprint
    # one changed row -> a different fingerprint
    rows = read_split(tmp_path / "a", "sft_train")
    rows[7]["completion"] += " Fun."
    (tmp_path / "a" / "sft_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = {k: v for k, v in a.manifest.items() if k != "files"}
    assert write_manifest(tmp_path / "a", info) != b.fingerprint
    assert read_manifest(tmp_path / "b")[1] == b.fingerprint


def test_verification_catches_a_changed_file(tmp_path):
    prepare(DataConfig(demo=SMALL), tmp_path / "d")
    with open(tmp_path / "d" / "eval_prompts.jsonl", "a") as f:
        f.write('{"prompt": "extra"}\n')
    with pytest.raises(DataError, match="eval_prompts.jsonl: missing or changed since the manifest was written"):
        read_manifest(tmp_path / "d")


def test_atomic_dir_leaves_nothing_on_failure_and_replaces_on_success(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "v1").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "v2").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and [p.name for p in target.iterdir()] == ["v2"]
