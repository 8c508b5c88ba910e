# The two set-up commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
CORE   := $(VENV)/.installed-core
DEV    := $(VENV)/.installed-dev

.PHONY: demo test install data clean

# lana itself (what `make demo` needs); torch from this machine's disk where it lies there
$(CORE): pyproject.toml
	@$(PYTHON) -c "import shutil, sys; gb = shutil.disk_usage('.').free / 2**30; gb < 7 and print(f'lana: warning: only {gb:.1f} GB free here; torch with its CUDA libraries takes about 6 GB in $(VENV)', file=sys.stderr)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1 || $(BIN)/python -m pip install -q "torch>=2.4" torchvision
	$(BIN)/python -m pip install -q -e .
	touch $(CORE)

# plus the test tools and every optional CPU path the tests exercise (ONNX, Torch-Pruning)
$(DEV): $(CORE)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(DEV)

install: $(DEV)

# Fashion-MNIST from Debian's package; where apt is unusable the demo falls back (it says so).
data:
	@if [ ! -e $(FMNIST)/train-images-idx3-ubyte.gz ] && [ ! -e $(FMNIST)/train-images-idx3-ubyte ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	      || echo "lana: could not install dataset-fashion-mnist; the demo will fall back to scikit-learn's digits"; \
	  else \
	    echo "lana: apt-get unusable here (not root or not Debian); the demo will fall back to scikit-learn's digits"; \
	  fi; \
	fi

demo: $(CORE) data
	$(BIN)/lana demo --run runs/demo

test: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n auto --dist worksteal --durations=15 tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) runs
