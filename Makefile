# Developer commands for simtrack. `make` (or `make help`) lists them.
#
# PYTHON is the interpreter of your virtualenv, e.g. `make test PYTHON=.venv/bin/python`.
# Its scripts directory goes first on PATH, so protoc finds protoc-gen-mypy and the `simtrack`
# command resolves even when the virtualenv is not activated.

PYTHON ?= python
BUF ?= node_modules/.bin/buf
TSC ?= node_modules/.bin/tsc
# The npm tools (buf, protoc-gen-es, tsc, esbuild) are pinned in package.json / package-lock.json;
# installed on first use.
NPM_TOOLS := node_modules/.bin/buf node_modules/.bin/protoc-gen-es node_modules/.bin/tsc node_modules/.bin/esbuild
SIMTRACK ?= simtrack

PY_SCRIPTS := $(shell $(PYTHON) -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null)
ifneq ($(PY_SCRIPTS),)
export PATH := $(PY_SCRIPTS):$(PATH)
endif

# mypy targets: only the directories that exist and hold Python files (mypy rejects the others).
MYPY_CANDIDATES := common/simtrack client/simtrack/client server/simtrack tests bench tools
MYPY_PATHS = $(shell for d in $(MYPY_CANDIDATES); do \
	[ -d "$$d" ] && [ -n "$$(find "$$d" -name '*.py' -print -quit)" ] && echo "$$d"; done)

.DEFAULT_GOAL := help
.PHONY: help protos dashboard lint test bench migrate serve

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

protos: | $(NPM_TOOLS) ## Regenerate the stubs from protos/: Python (common/simtrack/v1), TypeScript (web/src/gen), and the dashboard built on them
	$(PYTHON) tools/gen_protos.py
	$(BUF) generate
	npm run build:dashboard

dashboard: | $(NPM_TOOLS) ## Build the web dashboard (web/dashboard) into server/simtrack/server/dashboard
	npm run build:dashboard

lint: | $(NPM_TOOLS) ## ruff check, ruff format --check, mypy, lint-imports, buf lint, buf format check, tsc
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy $(MYPY_PATHS)
	lint-imports
	$(BUF) lint
	$(BUF) format -d --exit-code
	$(TSC) -p web
	$(TSC) -p web/smoke
	$(TSC) -p web/dashboard

test: ## Run the test suite (pytest)
	$(PYTHON) -m pytest -q -n 3

bench: ## Run the ingest benchmark
	$(PYTHON) -m bench ingest

migrate: ## Apply the database migrations (simtrack migrate)
	$(SIMTRACK) migrate

serve: ## Start the gRPC server (simtrack serve)
	$(SIMTRACK) serve

$(NPM_TOOLS) &:
	npm install --no-audit --no-fund
