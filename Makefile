# The two commands a newcomer runs:
#   make run    set up .venv with the engines for this platform and talk to the assistant (voicepipe run pipeline.yaml)
#   make test   install the system packages the tests use, set up .venv with every extra, run the whole test suite
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIPELINE ?= pipeline.yaml

UNAME := $(shell uname -s)-$(shell uname -m)
ifeq ($(UNAME),Darwin-arm64)
  RUN_EXTRAS := audio,vad,whisper,mlx,mlx-whisper,kokoro,piper
  TEST_EXTRAS := $(RUN_EXTRAS),llamacpp,coreml,dev
else
  RUN_EXTRAS := audio,vad,whisper,llamacpp,kokoro,piper
  TEST_EXTRAS := $(RUN_EXTRAS),mlx,mlx-whisper,coreml,dev
endif

.PHONY: run test system-deps venv-run venv-test lint clean

run: venv-run
	$(VENV)/bin/voicepipe run $(PIPELINE)

test: system-deps venv-test
	$(VENV)/bin/pytest $(PYTEST_ARGS)

system-deps:
	bash scripts/install_system_deps.sh

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# llama-cpp-python compiles from source on Linux (~11 min on 2 cores); pip caches the built wheel, so later
# installs (and CI on the same machine) take seconds.
$(VENV)/.run-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --progress-bar on -e ".[$(RUN_EXTRAS)]"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PY) -m pip install --progress-bar on -e ".[$(TEST_EXTRAS)]"
	touch $@ $(VENV)/.run-installed

venv-run: $(VENV)/.run-installed
venv-test: $(VENV)/.test-installed

lint: venv-test
	$(VENV)/bin/ruff check voicepipe tests scripts
	$(VENV)/bin/ruff format --check voicepipe tests scripts

clean:
	rm -rf $(VENV) build *.egg-info
