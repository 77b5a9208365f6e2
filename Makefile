# Two commands on a fresh machine: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH := torch==2.13.0
RESULTS ?= results

.PHONY: venv demo test lint clean

venv: $(STAMP)

# torch is installed on its own first: pinned, pip takes a local CPU wheel where the machine
# offers one (find-links) and PyPI's normal build anywhere else; the project's range then
# accepts what is there instead of pulling a multi-GB CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The demo starts afresh each time in $(RESULTS)/demo: the study, which ends with its region map,
# figures and summary (its analysis), and the commands to look further.
demo: $(STAMP)
	rm -rf $(RESULTS)/demo
	$(PY) -m grok_tune.search --space search_spaces/default.yaml --name demo --storage $(RESULTS)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check grok_tune analysis tests bench
	$(VENV)/bin/ruff format --check grok_tune analysis tests bench

clean:
	rm -rf $(VENV) results
