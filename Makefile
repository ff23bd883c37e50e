# The two set-up commands of the README: `make book` and `make test`.
# Each creates .venv from requirements.txt when it is missing; `make book` also downloads the data when it is
# not in the data folder ($BKD_DATA_DIR, else ~/.cache/bkd_core/data). `make test` never downloads.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: book test venv data readme-figure clean-book

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

data: $(STAMP)
	$(PY) -m bkd_core data

book: data
	$(VENV)/bin/jupyter-book build . --builder html

# The README's figure, drawn from the committed features batch by the book's plotting code.
readme-figure: $(STAMP)
	$(PY) docs/readme_figure.py

clean-book:
	rm -rf _build
