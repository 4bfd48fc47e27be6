# `make train` and `make test` bootstrap .venv themselves: the stamp file is rebuilt
# whenever pyproject.toml or constraints.txt is newer than the last install.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.ctjax-installed
WORKDIR ?= runs/default

.PHONY: train test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/ctjax train --config configs/default.py --workdir $(WORKDIR)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 -q tests

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/train_loop.py

clean:
	rm -rf $(VENV) runs
