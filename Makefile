# The README's two commands: `make demo` (the main job on built-in data) and `make test`.
# Both create the virtual environment and install everything first, so they work on a fresh machine.
VENV ?= .venv
PYTHON ?= python3
# torch/torchvision pinned to builds known to work together (a CUDA build that also runs on CPU);
# override for another platform, e.g. make TORCH_PKGS="torch torchvision" test
TORCH_PKGS ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin
TEST_WORKERS ?= 2

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_PKGS)
	$(BIN)/pip install --quiet -e '.[test,lite,export]'
	touch $@

demo: install
	$(BIN)/dlcv demo --out demo_out

# The suite runs in TEST_WORKERS pytest-xdist processes (one per core on CI's 2 cores; whole files per
# worker, so a file's fixtures are built once; in the order tests/conftest.py gives, longest first, rather than
# xdist's largest-count-first). The cross-path tests run twice: on this CPU's own kernels
# and on an AVX2-only machine's (ATen's and oneDNN's both capped: torch reads ATEN_CPU_CAPABILITY and oneDNN
# ONEDNN_MAX_CPU_ISA at start-up), so the suite holds on AVX2-only and AVX-512 machines alike. A CPU whose
# own kernels are AVX2 already ran them: the rerun would repeat the same ~3 minutes.
test: install
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder
	@if [ "$$($(BIN)/python -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')" = AVX2 ]; then \
		echo "cross-path rerun skipped: this CPU's own kernels are AVX2"; \
	else \
		ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder -m cross_path; \
	fi

clean:
	rm -rf $(VENV) demo_out .pytest_cache
