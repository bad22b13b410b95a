# Two commands for a newcomer on a fresh machine:
#   make demo   set up, index the bundled offline demo, and serve it at http://127.0.0.1:8000/
#   make test   set up and run the test suite (what CI runs)
# Both create the virtualenv .venv with the CPU build of torch on first use.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo
PORT ?= 8000

.PHONY: demo test setup clean-demo

# torch==2.13.0 first: an unpinned torch would pull a multi-GB CUDA build.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	@test -d $(DEMO)/photos || $(BIN)/blipsearch demo-photos $(DEMO)/photos
	$(BIN)/blipsearch index $(DEMO)/photos --model builtin:shapes --library $(DEMO)/library --captions
	$(BIN)/blipsearch serve --library $(DEMO)/library --port $(PORT)

# transformers 4.15's beam search, which BLIP's published captions came from: the decoding tests
# compare against its own scorer (read from the wheel, not installed; see tests/reference_tf415.py).
REFERENCE := $(VENV)/reference/transformers-4.15.0-py3-none-any.whl
$(REFERENCE): | $(BIN)/python
	$(BIN)/python -m pip download --quiet --no-deps --dest $(VENV)/reference transformers==4.15.0

# The suite in as many processes as there are cores (up to 4), a test file to each; then the
# tests that measure the machine's idle cores, alone.
test: $(VENV)/.installed-test $(REFERENCE)
	$(BIN)/python -m pytest -n auto --maxprocesses 4 --dist loadfile -m "not alone"
	$(BIN)/python -m pytest -m alone

clean-demo:
	rm -rf $(DEMO)
