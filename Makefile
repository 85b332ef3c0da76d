# Set-up is automatic: `make test` and `make demo` create .venv and install the project
# (with the data, test and stream extras) when it is missing or pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
METHODS := mcae unlearnable gradflow_prune infotok
RUNS ?= runs
PYTEST_ARGS ?=
# Test processes (pytest-xdist): one per core, at most 4 (each holds its own JAX and compile
# caches; 0 = in one process). Whole files go to one worker (--dist loadfile), so a module's
# fixtures and its background CLI run are made once.
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)

.PHONY: test demo lint format clean-runs notebooks notebook-outputs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[data,test,stream]'
	touch $(STAMP)

# pytest exits 5 when it collects no tests: say so plainly instead of failing obscurely.
test: $(STAMP)
	@$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

# Only the notebooks (tests/test_notebooks.py); `make test` runs them too.
notebooks: $(STAMP)
	$(PY) -m pytest -q -m notebooks tests/test_notebooks.py $(PYTEST_ARGS)

# Executes NB (e.g. NB=notebooks/infotok.ipynb) and saves it in place with its outputs.
notebook-outputs: $(STAMP)
	@test -n "$(NB)" || { echo "usage: make notebook-outputs NB=notebooks/<name>.ipynb"; exit 2; }
	$(PY) -m tests.test_notebooks $(NB)

# Runs each method's default config that exists yet, then writes $(RUNS)/REPORT.md.
demo: $(STAMP)
	@mkdir -p $(RUNS); found=0; \
	for m in $(METHODS); do \
	  if [ -f configs/$$m.py ] && [ -f $$m/__main__.py ]; then \
	    found=1; echo "== $$m (configs/$$m.py, default variant) =="; \
	    $(PY) -m $$m --config configs/$$m.py --workdir $(RUNS)/$$m || exit $$?; \
	  fi; \
	done; \
	if [ $$found -eq 0 ]; then echo "no methods yet: nothing to run"; fi; \
	$(PY) -m shared.report $(RUNS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .
