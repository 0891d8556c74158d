# Two commands for a fresh machine:
#   make demo   set up, then run the offline LlamaDuo loop on the demo data
#   make test   set up, then run the test suite (pytest-xdist: one worker per core)
#   make test-fast  the developer's loop: every stage's logic, no model load, no process (-m "not slow")
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DSTACK_VENV := .venv-dstack
VLLM_VENV   := .venv-vllm
# transformers as the vLLM environment resolves it, overlaid on .venv by tests/test_vllm_env.py
VLLM_CHECK  := .venv-vllm-check
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

# pytest-xdist: one worker per core (`make test TEST_WORKERS=4` to change); worksteal hands the
# waiting tests of a busy worker to an idle one, so the long end-to-end tests do not end up queued
# behind each other. Tests are classified at collection (tests/conftest.py: slow, model, process).
TEST_WORKERS ?= auto
XDIST := -n $(TEST_WORKERS) --dist worksteal

.PHONY: setup demo test test-fast bench clean-outputs venv-vllm sandbox-tool

setup: $(VENV)/.installed $(VENV)/.package $(VENV)/.model sandbox-tool

# bubblewrap: the kernel sandbox evaluation runs model-written code in (docs/evaluation.md, "The
# safety model"). Installed with apt-get where we are root on Debian/Ubuntu (CI, a fresh machine);
# elsewhere a note, not a failure: evaluation then refuses to run code unless execution_isolation: none.
sandbox-tool:
	@command -v bwrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap) \
	      || echo "note: could not install bubblewrap; code execution in evaluation will be refused"; \
	  else \
	    echo "note: bubblewrap (bwrap) is not installed; install it (e.g. sudo apt-get install bubblewrap)" \
	         "to run model-written code in evaluation (docs/evaluation.md)"; \
	  fi; }

# torch is installed first and pinned: an unpinned torch pulls a CUDA build of several GB.
$(VENV)/.installed: requirements.txt requirements-models.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -r requirements-models.txt
	touch $@

# The llamaduo package itself, editable (src/llamaduo/), so the scripts and the console entry points
# (llamaduo-finetune, ...) run the checkout's code. --no-deps: the pins above are the environment.
$(VENV)/.package: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q --no-deps -e .
	touch $@

# Convert the embedded SmolLM2 GGUF to a Hugging Face folder once (cached in ~/.cache/llamaduo).
$(VENV)/.model: $(VENV)/.package
	$(PY) -c "from llamaduo.models import provision_embedded_model as p; print('embedded model:', p())"
	touch $@

# dstack's own config models, for the test that validates dstack/*.yml (not a runtime dependency).
$(DSTACK_VENV)/.installed: requirements-dstack.txt
	$(PYTHON) -m venv $(DSTACK_VENV)
	$(DSTACK_VENV)/bin/python -m pip install -q -r requirements-dstack.txt
	touch $@

# In-process vLLM (`batch_inference.py --backend vllm`, CUDA only) in its own environment: vLLM pins
# torch and transformers versions that .venv cannot share (docs/batch_inference.md).
venv-vllm: $(VLLM_VENV)/.installed
$(VLLM_VENV)/.installed: requirements-vllm.txt
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q -r requirements-vllm.txt
	touch $@

$(VLLM_CHECK)/.installed: requirements-vllm.txt
	$(PY) -m pip install -q --no-deps --upgrade --target $(VLLM_CHECK)/site transformers==5.20.2
	touch $@

demo: setup
	PYTHON=$(PY) bash scripts/llamaduo.sh

test: setup $(DSTACK_VENV)/.installed $(VLLM_CHECK)/.installed
	$(PY) -m pytest $(XDIST)

test-fast: setup
	$(PY) -m pytest $(XDIST) -m "not slow"

bench: setup
	for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean-outputs:
	rm -rf outputs
