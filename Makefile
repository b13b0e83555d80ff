# loopserve: `make demo` runs the main job, `make test` passes the tests; both set up
# everything they need (a virtual environment in .venv, the native build, the packages).
PYTHON ?= python3
# torch's CPU build (a local wheel on our machines); on a GPU host: make TORCH=torch ...
TORCH ?= torch==2.13.0
EXTRAS ?= onnx,train,report,dev
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup browser demo test bench ui-vendor clean

setup: $(STAMP)

$(STAMP): pyproject.toml CMakeLists.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q "scikit-build-core>=0.10" "pybind11>=2.12" cmake ninja
	$(BIN)/pip install -q --no-build-isolation -e ".[$(EXTRAS)]" -Ceditable.rebuild=true -Cbuild-dir=build/editable
	touch $@

demo: $(STAMP)
	$(BIN)/loopserve demo

# The UI's browser tests need headless Chromium and its driver (Debian packages); installed
# only when missing, and only where apt-get can run as root (elsewhere those tests skip, saying why).
browser:
	@if ! command -v chromedriver >/dev/null || ! command -v chromium >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver; \
		else echo "no chromium/chromedriver and no root apt-get: the UI browser tests will skip"; fi; \
	fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/batching.py

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
