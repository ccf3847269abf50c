# Two commands for a fresh machine: `make demo` (the main job on real data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO ?= demo

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e '.[dev]'
	touch $@

.PHONY: install demo test lint bench clean
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m resnet_deploy.examples.digits --out $(DEMO)/data
	$(BIN)/resnet-deploy build --arch resnet18 --weights $(DEMO)/data/weights.pth --input-size 3x32x32 \
		--calib-data $(DEMO)/data/calib --val-data $(DEMO)/data/val \
		--precision fp32,fp16,int8 --target onnxruntime,tensorrt \
		--out $(DEMO)/out --force
	@echo "report: $(DEMO)/out/report.md"

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/cpu_engines.py

lint: $(STAMP)
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check resnet_deploy tests benchmarks
	$(BIN)/ruff format --check resnet_deploy

clean:
	rm -rf $(DEMO) .pytest_cache build *.egg-info
