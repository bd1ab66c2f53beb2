# The README's two commands:
#   make demo   set up .venv and edit the shipped example (offline)
#   make test   set up .venv with the test and reference extras and run the test suite
# Also: make fast (the tests without the slow, reference, processes and browser markers), make lint (ruff),
#       make precision (the precision tests again, with other float32 kernels and torch's rounding moved; CI runs it).
# GPU machines get PyPI's CUDA build of torch; machines without `nvidia-smi` get the CPU build.

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test fast precision lint setup setup-test torch fixtures benchmark gpu-wheels clean

demo: setup
	$(PY) -m blend --model toy

test: setup-test
	cd tests && $(abspath $(PY)) -m golden.make_fixtures --check
	$(PY) blend/evaluate/data/make_data.py --check
	$(PY) -m pytest -q

fast: setup-test
	$(PY) -m pytest -q -m "not slow and not reference and not processes and not browser"

# The stored goldens and the in-process bit-for-bit claims (marker precision) once more under ATen's portable
# kernels (ATEN_CPU_CAPABILITY=default: other float32 results for pow, sigmoid, softmax, norms, matmul and
# convolution than the AVX2/AVX-512 ones) with torch's roots, exponentials and powers rounded the other way for
# half of their results (BLD_TORCH_ROUNDING=one-ulp-off, tests/golden/precision.py), so that a claim that holds
# only for one CPU's rounding fails on any CPU. The full-size (slow) ones are left to the first run.
precision: setup-test
	ATEN_CPU_CAPABILITY=default BLD_TORCH_ROUNDING=one-ulp-off $(PY) -m pytest -q -m "precision and not slow"

lint: setup-test
	$(PY) -m ruff check .

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, so that nothing later can pull a CUDA build onto a CPU-only machine.
torch: $(PY)
	@if $(PY) -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$(TORCH_VERSION)')" 2>/dev/null; then \
	  echo "torch $(TORCH_VERSION) already installed"; \
	elif command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PIP) install "torch==$(TORCH_VERSION)"; \
	else \
	  $(PIP) install "torch==$(TORCH_VERSION)+cpu" 2>/dev/null \
	  || $(PIP) install "torch==$(TORCH_VERSION)+cpu" --extra-index-url https://download.pytorch.org/whl/cpu; \
	fi

setup: torch
	$(PIP) install -q -e .

# open_clip_torch goes in with --no-deps: its torchvision requirement would replace the CPU torch.
# lpips too. Its torchvision (the LPIPS reference builds VGG16 with it) goes into a folder off sys.path:
# PyPI's Linux wheel is built against CUDA torch, so `import torchvision` fails beside the CPU torch, and
# transformers must keep seeing no torchvision. tests/test_blend_evaluate_lpips.py imports its models/vgg.py.
# guided-diffusion-sdk (import name guided_diffusion, the ADM and its diffusion, Blended Diffusion's reference) goes
# in with --no-deps as well: its modules that the tests import need only torch and numpy. So does kornia 0.7.0 (pure
# Python; the official Blended Diffusion's augmentations, against which blend/clip_guidance.py's warps are checked).
setup-test: torch
	$(PIP) install -q -e ".[test,reference,notebooks]"
	$(PIP) install -q --no-deps open_clip_torch==3.3.0
	$(PIP) install -q --no-deps lpips==0.1.4
	$(PIP) install -q --no-deps guided-diffusion-sdk==1.0.0 kornia==0.7.0
	$(PIP) install -q --no-deps --upgrade --target $(VENV)/reference-torchvision torchvision==0.28.0

fixtures: setup-test
	cd tests && $(abspath $(PY)) -m golden.make_fixtures

# Ours against diffusers/transformers on the same weights, float32 and (where the CPU has it) bfloat16 in one
# run (benchmarks/README.md); whole_edit is opt-in: make benchmark ARGS="--only whole_edit".
# The benchmark extra adds OpenVINO as a third side (numpy and openvino-telemetry beside it; it pulls no torch).
benchmark: setup-test
	$(PIP) install -q -e ".[benchmark]"
	$(PY) -m benchmarks.versus_diffusers $(ARGS)

# The wheels that benchmarks/gpu_check.sh installs on a GPU machine with no network (Python 3.12, x86-64):
# what its image lacks of the runtime and reference packages. Carry .whl/ there (the script's header).
GPU_WHEELS = diffusers==0.42.1 open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4 importlib_metadata==10.2.0 \
             lazy-importer==0.1.0
gpu-wheels: $(PY)
	rm -rf .whl
	$(PIP) download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
	  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $(GPU_WHEELS)
	du -sh .whl

clean:
	rm -rf $(VENV) *.egg-info
