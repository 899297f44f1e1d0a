"""What can be checked of the infra without Docker or Kubernetes here: files parse and carry the GPU settings."""
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[2]


def test_compose_stack_has_every_service_and_a_gpu_worker():
    compose = yaml.safe_load((ROOT / "infra" / "compose.yaml").read_text())
    services = compose["services"]
    assert {"prefect-server", "prefect-db", "mlflow", "mlflow-db", "minio", "cpu-worker", "gpu-worker"} <= set(services)
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "--backend-store-uri postgresql://" in services["mlflow"]["command"]
    assert "--artifacts-destination s3://" in services["mlflow"]["command"]
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert "--pool gpu" in services["gpu-worker"]["command"] and "--pool cpu" in services["cpu-worker"]["command"]
    assert services["cpu-worker"]["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"  # the YAML anchors merge


def test_kubernetes_job_template_requests_gpus():
    template = json.loads((ROOT / "infra" / "k8s" / "gpu-base-job-template.json").read_text())
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert template["variables"]["properties"]["gpus"]["default"] == 1


def test_image_leaves_the_command_to_prefect_workers():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ENTRYPOINT" not in dockerfile.replace("# No ENTRYPOINT", "")
    assert "COPY prefect.yaml" in dockerfile and "RLHF_HOME=/opt/rlhf" in dockerfile
