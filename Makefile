# The two commands of the quick start. Both create .venv from the pinned versions when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test docs results venv clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lightning-prune-init fit -c examples/configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) lightning_logs .pytest_cache

docs: $(STAMP)
	$(PY) -m pdoc lightning_prune_init --docformat google -o docs/_build/api
	@echo "API reference: docs/_build/api/index.html; user guide: docs/guide.md"

results: $(STAMP)
	for study in init_study signal_propagation trainability supervision sculpting; do \
		$(PY) -m experiments.$$study --quick || exit 1; \
	done
	@echo "tables and figures: docs/results/; write-up: docs/results.md"
