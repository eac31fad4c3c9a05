# The two commands a newcomer needs: `make run` and `make test`.
# Both create .venv on first use and install the project into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install bench clean-runs serve backtest

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# skfolio's real example prices (pyproject's `examples` extra), without its heavy dependencies
	$(BIN)/pip install --quiet --no-deps 'skfolio>=1.12,<2'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/python run_pipeline.py $(ARGS)

# The reviewer's pages and /orchestrator on http://127.0.0.1:8080 (optional; ARGS="--port 9000").
serve: $(STAMP)
	$(BIN)/python -m lib.web $(ARGS)

# pytest exits 5 when it collected no test: that is a failure here, said plainly.
test: $(STAMP)
	$(BIN)/python -m tests.check_notebooks_clean
	@$(BIN)/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python benchmarks/decision_bench.py
	$(BIN)/python benchmarks/pipeline_bench.py

# The portfolio backtest of the real-data example (offline): import skfolio's prices, backtest, tear sheet.
backtest: $(STAMP)
	$(BIN)/python -m lib.seed >/dev/null
	$(BIN)/python -m lib.ops strategies show factor_momentum >/dev/null 2>&1 || $(BIN)/python -m lib.ops strategies add \
		notebooks/strategies/factor_momentum.ipynb --allocation 0.2 --name "Factor momentum rotation"
	$(BIN)/python -m lib.data import-examples
	$(BIN)/python run_pipeline.py backtest --from 2015-01-02 --to 2022-12-28 --strategies factor_momentum --benchmark SP500 $(ARGS)
