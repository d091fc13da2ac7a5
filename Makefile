# trainyard: `make demo` trains a model end to end on the embedded default;
# `make test` runs the whole suite against PostgreSQL and Redis.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install browser demo test lint bench clean

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints-cpu.txt -e '.[platform,trainer,dev]'
	touch $(STAMP)

install: $(STAMP)

# The dashboard's tests drive Debian's Chromium (Playwright never downloads a browser).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else echo "The dashboard tests need Debian's chromium: sudo apt-get install -y chromium"; fi; }

demo: install
	$(BIN)/trainyard demo

test: install browser
	scripts/with-services $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy trainyard domain api workers trainer

clean:
	rm -rf $(VENV) .trainyard build *.egg-info
