PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BACKENDS ?= jax tensorflow torch
# Demo backend chosen by measurement on a 2-core CPU (see README / benchmarks/README.md).
DEMO_BACKEND ?= tensorflow
PYTEST_ARGS ?=

.PHONY: venv test demo lint clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[all,dev]"
	touch $@

venv: $(VENV)/.installed

test: venv
	@status=0; for b in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$b"; \
	  KERAS_BACKEND=$$b $(PY) -m pytest -q $(PYTEST_ARGS) || status=1; \
	done; exit $$status

demo: venv
	KERAS_BACKEND=$(DEMO_BACKEND) $(PY) -m keras_mm.demo --out runs/demo

lint: venv
	$(VENV)/bin/ruff check keras_mm tests examples benchmarks

clean:
	rm -rf $(VENV) runs
