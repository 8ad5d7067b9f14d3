# The two commands a newcomer needs: `make run` and `make test`. Both create the virtual
# environment in .venv and install the pinned stack on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install run train test bench lock clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip==26.3"
	$(BIN)/python -m pip install --quiet -c requirements.lock -e ".[train,dev]"
	@touch $(STAMP)

# The main job: Redis (if nothing listens at REDIS_URL), the ML backend and a training worker,
# stopped together on Ctrl-C. With IMAGES=DIR it predicts the images under DIR instead.
run: $(STAMP)
	@if [ -n "$(IMAGES)" ]; then $(BIN)/thumbnail-ml predict "$(IMAGES)"; else $(BIN)/thumbnail-ml run; fi

train: $(STAMP)
	@if [ -z "$(EXPORT)" ] || [ -z "$(IMAGES)" ]; then \
		echo "usage: make train EXPORT=FILE IMAGES=DIR   (a Label Studio export and its images)"; exit 2; fi
	$(BIN)/thumbnail-ml train --export "$(EXPORT)" --images "$(IMAGES)"

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Benchmarks are not tests: they take tens of minutes and write their figures to bench/results/.
bench: $(STAMP)
	$(BIN)/python bench/predict_latency.py
	$(BIN)/python bench/preannotate_throughput.py
	$(BIN)/python bench/learning_loop.py
	$(BIN)/python bench/input_size.py
	$(BIN)/python bench/active_learning.py

# Regenerate requirements.lock from the current environment after changing pyproject.toml.
lock: $(STAMP)
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^thumbnail-ml' > requirements.lock

clean:
	rm -rf $(VENV) .pytest_cache
