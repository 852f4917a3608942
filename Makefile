# One entry point for people and CI. `make demo` and `make test` do all set-up
# themselves on a fresh Debian 12 machine (apt as root, venvs, local images).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
SANITY_VENV := .venv-sanity
BIN := $(VENV)/bin
COLLECTION_LINK := .collections/ansible_collections/minimarket/backup
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help bootstrap venv collection-link images setup demo test unit sanity lint integration scenarios bench build clean

help:
	@echo "make demo   - bring up the development stack and run the main job on it"
	@echo "make test   - every test: unit, sanity, lint, integration, molecule scenarios"
	@echo "make unit | sanity | lint | integration | scenarios | bench | build"

bootstrap:
	@bash scripts/bootstrap-host.sh

$(BIN)/.installed: requirements/ansible.txt requirements/test.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements/test.txt
	touch $@

$(SANITY_VENV)/.installed: requirements/sanity.txt
	$(PYTHON) -m venv $(SANITY_VENV)
	$(SANITY_VENV)/bin/pip install -q -r requirements/sanity.txt
	touch $@

venv: $(BIN)/.installed $(SANITY_VENV)/.installed

collection-link:
	@mkdir -p $(dir $(COLLECTION_LINK))
	@ln -sfn ../../.. $(COLLECTION_LINK)

images: bootstrap
	@bash testenv/images/build.sh

setup: bootstrap venv collection-link images

demo: setup
	@bash testenv/demo.sh

# One pytest session, so the closing summary counts everything: the quality gates
# (sanity, lint, build) and the molecule scenarios run as tests too.
test: setup
	$(BIN)/pytest tests/unit tests/quality tests/integration tests/scenarios

unit: venv collection-link
	$(BIN)/pytest tests/unit

sanity: venv
	bash scripts/sanity.sh

lint: venv collection-link
	$(BIN)/ansible-lint --profile production

integration: setup
	$(BIN)/pytest tests/integration

scenarios: setup
	$(BIN)/pytest tests/scenarios

bench: setup
	$(BIN)/python bench/bench_pg_split_dump.py --rows $${PG_BENCH_ROWS:-1800000}
	$(BIN)/python bench/bench_pg_split_dump.py --container --rows $${PG_BENCH_ROWS:-1800000}
	$(BIN)/python bench/bench_docker_volume_archive.py --size-mb $${VOLUME_BENCH_MB:-2000}
	$(BIN)/python bench/bench_volume_reader.py --compression zstd
	$(BIN)/python bench/bench_volume_reader.py --compression gzip
	$(BIN)/python bench/bench_service_downtime.py --redis-keys $${REDIS_BENCH_KEYS:-200000}

build: venv
	$(BIN)/ansible-galaxy collection build --force --output-path build/

clean:
	rm -rf build .pytest_cache
