# trainyard: `make demo` trains a model end to end on the embedded default;
# `make test` runs the whole suite against PostgreSQL and Redis.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install debs demo test lint bench clean

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints-cpu.txt -e '.[platform,trainer,dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests use: Chromium for the dashboard's browser tests (Playwright
# never downloads a browser) and a C++ compiler for torch.compile's CPU code.
debs:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v g++ >/dev/null 2>&1 || missing="$$missing g++"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
		else echo "The tests need Debian's$$missing: sudo apt-get install -y$$missing"; fi; fi

demo: install
	$(BIN)/trainyard demo

test: install debs
	scripts/with-services $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy trainyard domain api workers trainer

clean:
	rm -rf $(VENV) .trainyard build *.egg-info
