# The two commands a newcomer needs: `make run` and `make test`. Both create the virtual
# environment in .venv and install the pinned stack on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install run train test bench bench-research lock clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[train,dev]"
	@touch $(STAMP)

# The main job: Redis (if nothing listens at REDIS_URL), the ML backend and a training worker,
# stopped together on Ctrl-C. With IMAGES=DIR it predicts the images under DIR instead, with the
# model of PROJECT=N when given.
run: $(STAMP)
	@if [ -n "$(IMAGES)" ]; then $(BIN)/thumbnail-ml predict "$(IMAGES)" $(if $(PROJECT),--project $(PROJECT)); \
	else $(BIN)/thumbnail-ml run; fi

train: $(STAMP)
	@if [ -z "$(EXPORT)" ] || [ -z "$(IMAGES)" ]; then \
		echo "usage: make train EXPORT=FILE IMAGES=DIR   (a Label Studio export and its images)"; exit 2; fi
	$(BIN)/thumbnail-ml train --export "$(EXPORT)" --images "$(IMAGES)"

test: $(STAMP) chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# tests/e2e/test_browser_e2e.py drives Debian's chromium package through Playwright, because
# Playwright's own browser download is not used. The install took 16 s on a 2-core machine,
# apt-get update included.
.PHONY: chromium demo
CHROMIUM := /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; \
		else \
			echo "$(CHROMIUM) is missing. Install it as root, then rerun make:"; \
			echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium"; \
			exit 1; \
		fi; \
	fi

# A local Label Studio with a project over the images in IMAGES, connected to the backend and a
# training worker; Ctrl-C stops everything. EXPORT=FILE trains a first model when none exists.
demo: $(STAMP)
	@if [ -z "$(IMAGES)" ]; then \
		echo "usage: make demo IMAGES=DIR [EXPORT=FILE]   (a folder of images, and a Label Studio export of them)"; exit 2; fi
	$(BIN)/thumbnail-ml demo --images "$(IMAGES)" $(if $(EXPORT),--export "$(EXPORT)")

# Benchmarks are not tests. `bench` measures the speed targets (about 25 minutes on 2 cores),
# saves each result in bench/results/ and writes docs/benchmarks.md from them. `bench-research`
# reruns the longer studies behind docs/input-size.md and docs/active-learning.md.
bench: $(STAMP)
	$(BIN)/python bench/predict_latency.py
	$(BIN)/python bench/concurrent_predict.py
	$(BIN)/python bench/preannotate_throughput.py
	$(BIN)/python bench/training_speed.py
	$(BIN)/python bench/learning_loop.py
	$(BIN)/python bench/components.py
	$(BIN)/python bench/write_benchmarks.py

bench-research: $(STAMP)
	$(BIN)/python bench/input_size.py
	$(BIN)/python bench/active_learning.py

# Regenerate requirements.lock from the current environment after changing pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^thumbnail-ml' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
