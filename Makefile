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

# The test environment has every extra: training (torch, librosa), mic, dev tools, the benchmarks and Ray (batch).
$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python system-deps
	$(BIN)/python -m pip install -q -e '.[train,mic,dev,bench,batch]'
	touch $@ $(VENV)/.runtime-installed

# Debian packages the tests need: PortAudio for the microphone extra (sounddevice), Chromium for the
# web page test, FluidSynth and a small GM soundfont for rendered music. Installed with apt-get when running as root; otherwise a warning says how.
# A failed install never stops the run.
# $(call apt_package,PACKAGE,CHECK,WHY,OTHER SYSTEMS): install PACKAGE unless the shell test CHECK passes.
define apt_package
	@if $(2); then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing $(1) ($(3))"; \
		(apt-get install -y -q --no-install-recommends $(1) >/dev/null 2>&1 \
		 || (apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $(1) >/dev/null)) \
		|| echo "warning: could not install $(1): $(3)"; \
	else \
		echo "warning: $(1) is missing: $(3). Install it (Debian/Ubuntu: sudo apt-get install $(1)$(4))"; \
	fi
endef

system-deps:
	$(call apt_package,libportaudio2,ldconfig -p 2>/dev/null | grep -q libportaudio.so.2,swishnet mic and serve --mic need it (the tests use a fake device),; macOS: brew install portaudio)
	$(call apt_package,chromium,test -x /usr/bin/chromium,the web page test is skipped without it)
	$(call apt_package,libfluidsynth3,ldconfig -p 2>/dev/null | grep -q libfluidsynth.so.3,the corpus builder renders music with it,; macOS: brew install fluid-synth)
	$(call apt_package,timgm6mb-soundfont,test -f /usr/share/sounds/sf2/TimGM6mb.sf2,the rendered-music test plays a MIDI file with it)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
