# Two commands on a fresh machine:  make run   /   make test
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
EXTRAS  ?= torch,tvm,data,bench,test
EXAMPLE := models/examples/mobilenet_v2_digits.onnx

.PHONY: setup run test test-fast bench cross clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

setup: $(VENV)/.installed

TRAINED := models/examples/mobilenet_v2_digits_prelu.onnx

## collapse the bundled example (MobileNetV2 trained on sklearn digits with the Layer Folding term by
## models/train_digits_collapse.py): fold PReLU slopes >= 0.9, merge, report accuracy / depth / latency
run: setup
	mkdir -p out
	$(PY) -m collapse_passes $(TRAINED) --method prelu --threshold 0.1 \
		--eval models/examples/digits_eval.npz --calib models/examples/digits_calib.npz \
		-o out/mobilenet_v2_digits.collapsed.onnx --report out/report.json

## the whole test suite (its time on 2 cores: README, Quick start)
test: setup
	$(PY) -m pytest -q -n 2 --durations=15

test-fast: setup
	$(PY) -m pytest -q -n 2 -m "not slow and not tvm"

bench: setup
	$(PY) benchmarks/merge_latency.py
	$(PY) benchmarks/tvm_latency.py

## the AArch64 cross compiler used by --target aarch64 (Debian)
cross:
	command -v aarch64-linux-gnu-g++ >/dev/null || (apt-get update -qq && apt-get install -y -qq g++-aarch64-linux-gnu)

clean:
	rm -rf out .pytest_cache
