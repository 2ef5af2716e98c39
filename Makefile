# care_tf: every target installs what it needs into .venv first.
PY ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install data test test-all quickstart lint format bench clean

install: $(STAMP)

$(STAMP): setup.py
	$(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e ".[cpu,test]"
	# tensorflow-serving-api requires the full `tensorflow` wheel; its protos are all we use.
	$(PYTHON) -m pip install -q --no-deps tensorflow-serving-api==2.21.0
	touch $@

# The offline default dataset (Debian package); skipped with a note where apt is absent.
data:
	@if [ -f "$(FMNIST)" ] || [ -n "$$CARE_DATA_DIR" ]; then \
	  echo "Fashion-MNIST: present"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "apt-get not found: set CARE_DATA_DIR to a folder holding the Fashion-MNIST IDX .gz files"; \
	fi

test: install data
	$(VENV)/bin/ruff check care_tf tests bench
	$(PYTHON) -m pytest -m "not slow"

test-all: install data
	$(PYTHON) -m pytest

lint: install
	$(VENV)/bin/ruff check care_tf tests bench
	$(VENV)/bin/ruff format --check care_tf tests bench

format: install
	$(VENV)/bin/ruff format care_tf tests bench
	$(VENV)/bin/ruff check --fix care_tf tests bench

quickstart: install data
	$(PYTHON) -m care_tf.quickstart --model_dir runs/quickstart

bench: install data
	for b in bench/*.py; do $(PYTHON) $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache *.egg-info
