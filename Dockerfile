# The pipeline image. GPU by default (CUDA PyTorch base); CPU variant:
#   docker build --build-arg BASE=python:3.11-slim --build-arg TORCH_SPEC="torch==2.13.0" -t rlhf:cpu .
ARG BASE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-devel
FROM ${BASE}
ARG TORCH_SPEC=""
# RLHF_HOME is where prefect.yaml's pull step finds the code inside the image.
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PREFECT_SERVER_ANALYTICS_ENABLED=false RLHF_HOME=/opt/rlhf
WORKDIR /opt/rlhf
RUN if [ -n "$TORCH_SPEC" ]; then pip install --no-cache-dir "$TORCH_SPEC" --index-url https://download.pytorch.org/whl/cpu; fi
COPY pyproject.toml constraints.txt README.md ./
COPY components components
COPY tasks tasks
COPY flows flows
COPY rlhf rlhf
COPY configs configs
COPY prefect.yaml ./
RUN grep -v '^torch==' constraints.txt > /tmp/c.txt && pip install --no-cache-dir -c /tmp/c.txt . && pip check
# No ENTRYPOINT: Prefect's docker and kubernetes workers replace the command with `prefect flow-run execute`.
CMD ["rlhf", "run", "--config", "configs/demo.yaml"]
