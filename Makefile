# loopserve: `make demo` runs the main job, `make test` passes the tests; both set up
# everything they need (a virtual environment in .venv, the native build, the packages).
PYTHON ?= python3
# torch's CPU build (a local wheel on our machines); on a GPU host: make TORCH=torch ...
TORCH ?= torch==2.13.0
EXTRAS ?= onnx,train,report,dev
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-packages demo demo-fleet test bench fuzz-api ui-vendor clean

setup: $(STAMP)

$(STAMP): pyproject.toml CMakeLists.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja
	$(BIN)/pip install -q --no-build-isolation -e ".[$(EXTRAS)]" -Ceditable.rebuild=true -Cbuild-dir=build/editable
	touch $@

# What the tests start or run themselves: PostgreSQL (the shared store), Prometheus (scraping a
# server), kubectl (rendering the kustomize manifests). Installed only when missing, and only as
# root on a Debian-like machine (elsewhere the tests that need them say why they skip).
system-packages:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	command -v kubectl >/dev/null 2>&1 || missing="$$missing kubernetes-client"; \
	command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || missing="$$missing chromium chromium-driver"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing:$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		else \
			echo "not installed (needs root and apt-get):$$missing"; \
		fi; \
	fi

demo: $(STAMP)
	$(BIN)/loopserve demo

# The same loop on three servers sharing one store (PostgreSQL when it is installed) and the traffic.
demo-fleet: $(STAMP) system-packages
	$(BIN)/loopserve demo --replicas 3

test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/batching.py

# Schemathesis against a server it starts (two front ends), from GET /v2/openapi.json: no 5xx,
# every answer as described. The suite runs it for seconds; this for ten minutes (FUZZ_S).
FUZZ_S ?= 600
fuzz-api: $(STAMP)
	$(BIN)/python bench/fuzz_api.py --max-time $(FUZZ_S)

# uPlot is committed under the package's static folder (about 53 KB, MIT): a clean clone and a
# pip-installed wheel serve the UI with no npm and no CDN. This refreshes it from the npm registry.
UPLOT ?= 1.6.32
UPLOT_DIR := python/loopserve/ui/static/vendor/uplot
ui-vendor:
	rm -rf build/uplot && mkdir -p build/uplot
	cd build/uplot && npm pack --silent uplot@$(UPLOT) && tar xzf uplot-$(UPLOT).tgz
	cp build/uplot/package/dist/uPlot.iife.min.js build/uplot/package/dist/uPlot.min.css build/uplot/package/LICENSE $(UPLOT_DIR)/

clean:
	rm -rf $(VENV) build demo-run
