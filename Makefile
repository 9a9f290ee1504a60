# `make demo` sets everything up (a virtual environment in .venv) and trains the example VAE;
# `make test` runs the tests. Both need only Python 3.10+ and the package registry.
PYTHON ?= python3
# one virtual environment per interpreter, so `make test PYTHON=python3.13` never reuses another's
VENV ?= $(if $(filter python3,$(PYTHON)),.venv,.venv-$(notdir $(PYTHON)))
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# MNIST: use the project's shared copy where it sits beside the checkout, else data.dir / download.
ifneq ($(wildcard ../shared/data/MNIST),)
export PYRO_VAE_DATA ?= $(abspath ../shared/data)
endif

.PHONY: demo test bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	@# the data make found stay found after `. $(VENV)/bin/activate`, in any shell
	@if [ -n "$$PYRO_VAE_DATA" ]; then echo "export PYRO_VAE_DATA=\"$$PYRO_VAE_DATA\"" >> $(VENV)/bin/activate; fi
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/pyro-vae train --config examples/configs/mnist_vae.toml --out runs/demo --overwrite
	$(BIN)/pyro-vae generate runs/demo --n 64 --out runs/demo/generated.png

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/train_step.py
