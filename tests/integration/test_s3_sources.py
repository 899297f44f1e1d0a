"""s3:// datasets and model directories, over HTTP against moto's S3 server on 127.0.0.1."""
import json

import boto3
import pytest
from moto.server import ThreadedMotoServer

from components.data.config import DatasetSource
from components.data.sources import read_rows
from components.errors import RLHFError
from components.models.config import ArchSpec, ModelSpec
from components.models.loading import causal_lm, load_tokenizer, save_pretrained


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test",
           "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        client = boto3.client("s3")
        client.create_bucket(Bucket="rlhf")
        yield client
    server.stop()


def test_jsonl_dataset_from_s3(s3, tmp_path):
    s3.put_object(Bucket="rlhf", Key="data/pref.jsonl",
                  Body=json.dumps({"prompt": "Review of X:", "chosen": " Great.", "rejected": " Dull."}) + "\n")
    rows = read_rows(DatasetSource(path="s3://rlhf/data/pref.jsonl"), tmp_path)
    assert rows.name == "s3://rlhf/data/pref.jsonl" and rows.rows[0]["chosen"] == " Great."
    assert (tmp_path / "s3" / "rlhf" / "data" / "pref.jsonl").is_file()
    with pytest.raises(RLHFError, match=r"^s3://rlhf/data/missing.jsonl: download failed"):
        read_rows(DatasetSource(path="s3://rlhf/data/missing.jsonl"), tmp_path)


def test_model_directory_from_s3(s3, tmp_path, tokenizer):
    model = causal_lm(ModelSpec(arch=ArchSpec(n_layer=1, hidden_size=32, n_head=2)), tokenizer, field="m")
    save_pretrained(model, tokenizer, tmp_path / "local")
    for f in (tmp_path / "local").iterdir():
        s3.upload_file(str(f), "rlhf", f"models/tiny/{f.name}")
    cache = tmp_path / "cache"
    loaded = causal_lm(ModelSpec(name_or_path="s3://rlhf/models/tiny"), tokenizer, field="sft.model", cache_dir=cache)
    assert loaded.config.n_layer == 1
    assert len(load_tokenizer("s3://rlhf/models/tiny", cache_dir=cache)) == len(tokenizer)
    with pytest.raises(RLHFError, match=r"^s3://rlhf/models/none: no objects under this prefix"):
        causal_lm(ModelSpec(name_or_path="s3://rlhf/models/none"), tokenizer, field="sft.model", cache_dir=cache)
