# The two commands of the quick start. Both create .venv from the pinned versions when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test docs results results-full venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lightning-prune-init fit -c examples/configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --doctest-modules lightning_prune_init tests

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache

docs: $(STAMP)
	$(PY) -m pdoc lightning_prune_init --docformat google -o docs/_build/api
	@echo "API reference: docs/_build/api/index.html; user guide: docs/guide.md"

# Quick mode (directions only, about 10 min on 2 CPU cores): the digits, then MNIST-1D.
results: $(STAMP)
	for study in init_study signal_propagation trainability supervision sculpting; do \
		$(PY) -m experiments.$$study --quick || exit 1; \
	done
	for study in init_study signal_propagation trainability supervision; do \
		$(PY) -m experiments.$$study --quick --data mnist1d || exit 1; \
	done
	@echo "tables and figures: docs/results/ (digits), docs/results/mnist1d/; write-up: docs/results.md"

# Full settings, 5 seeds with 95% intervals (10,000 steps, the authors' 10,000-step SGD repair, 90/95/98%):
# the trainability study on the digits and the four studies on MNIST-1D. Hours on CPU (see docs/results.md).
results-full: $(STAMP)
	$(PY) -m experiments.trainability --seeds 5
	for study in init_study signal_propagation trainability supervision; do \
		$(PY) -m experiments.$$study --data mnist1d --seeds 5 || exit 1; \
	done
	@echo "tables and figures: docs/results/full/digits/, docs/results/full/mnist1d/; write-up: docs/results.md"
