# loopserve: `make demo` runs the main job, `make test` passes the tests; both set up
# everything they need (a virtual environment in .venv, the native build, the packages).
PYTHON ?= python3
# torch's CPU build (a local wheel on our machines); on a GPU host: make TORCH=torch ...
TORCH ?= torch==2.13.0
EXTRAS ?= onnx,train,report,dev
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup system-packages demo test bench clean

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

test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/batching.py

clean:
	rm -rf $(VENV) build demo-run
