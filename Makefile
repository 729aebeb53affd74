# Two commands (see README):  make serve   and   make test
# Each creates its own virtual environment in .venv and installs what it needs.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
PYTEST_ARGS ?=

.PHONY: serve test system-deps clean

serve: $(VENV)/.runtime-installed
	$(BIN)/swishnet serve --host $(HOST) --port $(PORT)

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

$(BIN)/python:
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "Python 3.10 or newer is needed"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime-installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# The test environment has every extra: training (torch, librosa), mic, dev tools and the benchmarks.
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python system-deps
	$(BIN)/python -m pip install -q -e '.[train,mic,dev,bench]'
	touch $@ $(VENV)/.runtime-installed

# Debian packages the extras need: PortAudio for the microphone (sounddevice).
system-deps:
	@if ldconfig -p 2>/dev/null | grep -q libportaudio.so.2; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing libportaudio2 (needed by the microphone extra)"; \
		(apt-get install -y -q libportaudio2 >/dev/null 2>&1 || (apt-get update -q >/dev/null && apt-get install -y -q libportaudio2 >/dev/null)) \
		|| echo "warning: could not install libportaudio2; microphone tests will be skipped"; \
	else \
		echo "warning: PortAudio is missing; install it (Debian/Ubuntu: sudo apt-get install libportaudio2," \
		     "macOS: brew install portaudio) for the microphone demo; its tests will be skipped"; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
