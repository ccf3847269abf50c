# Two commands for a fresh machine: `make demo` (the main job on real data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO ?= demo

# The tritonserver binary (with its Python backend) of the nvidia-pytriton wheel, unpacked into $(VENV)/tritonserver
# with --no-deps --target: the wheel's own requirements (numpy<2) would clash with the venv's, and only its server is
# used. resnet-deploy finds it there (serving/server.py).
$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements/constraints.txt -e '.[dev,triton]'
	$(BIN)/pip install --quiet --no-deps --upgrade --target $(VENV)/tritonserver -c requirements/constraints.txt nvidia-pytriton
	touch $@

.PHONY: install demo test lint bench clean
install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m resnet_deploy.examples.digits --out $(DEMO)/data
	$(BIN)/resnet-deploy build --arch resnet18 --weights $(DEMO)/data/weights.pth --input-size 3x32x32 \
		--calib-data $(DEMO)/data/calib --val-data $(DEMO)/data/val \
		--precision fp32,fp16,int8 --target onnxruntime,tensorrt \
		--out $(DEMO)/out --force
	$(BIN)/resnet-deploy triton $(DEMO)/out --repo $(DEMO)/triton --python-backend --force
	$(BIN)/resnet-deploy serve-check $(DEMO)/triton --val-data $(DEMO)/data/val --build $(DEMO)/out \
		--models resnet18-fp32-onnxruntime,resnet18-int8-onnxruntime,resnet18-int8-openvino --concurrency 1,4,8 --requests 300 --seconds 5
	@echo "report: $(DEMO)/out/report.md"

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/cpu_engines.py

lint: $(STAMP)
	$(BIN)/pip install --quiet ruff
	$(BIN)/ruff check resnet_deploy tests benchmarks
	$(BIN)/ruff format --check resnet_deploy
	$(BIN)/lint-imports

clean:
	rm -rf $(DEMO) .pytest_cache build *.egg-info
