# xlir: `make demo` (index the sample corpus, serve, query over REST) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
XLIR := $(VENV)/bin/xlir
# CPU build of PyTorch (the plain name would pull a multi-GB CUDA build); override on a GPU machine. `.[dev]` is the
# full install (extras serve + torch: every backend, the ONNX export) and the test tools; a serving machine
# needs only `pip install 'xlir[serve]'` (no torch) and the model folder with its ONNX export (README "Encoder
# backends").
TORCH_SPEC ?= torch==2.13.0
DEMO_DIR ?= .demo
DEMO_PORT ?= 8765

.PHONY: setup install models demo test test-fast lint bench-demo bench-quality bench-speed bench-load clean image

setup: install models

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,train,ray]"
	touch $@

models: install
	$(XLIR) models fetch e5-small --students
	$(XLIR) models centroids data/sample/corpus.jsonl --model e5-small

demo: setup
	$(XLIR) index data/sample/corpus.jsonl --out $(DEMO_DIR)/index --overwrite
	$(PY) -m cli.demo --index $(DEMO_DIR)/index --port $(DEMO_PORT)

test: setup
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not model and not ray"

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy app indexer models xlir benchmarks cli

bench-demo: setup
	$(XLIR) bench demo --out benchmarks/results/demo.json

# the quality matrix, checked against benchmarks/matrix.yaml (exit 1 when a cell is off by more than its tolerance;
# the file is never written): RECORD=new.yaml also writes this run's figures to a new file, for a reviewed commit
bench-quality: setup
	$(PY) -m benchmarks.matrix --out benchmarks/results/matrix.md $(if $(RECORD),--record $(RECORD))

# speed benchmarks, one command each, on a quiet machine (about 4 min for the encoder backends, 2 for BM25, 10 for
# FAISS, 45 for indexing 100k passages, 7 to build each synthetic 1M index once (cached) + 4 of load each, on 2 cores)
bench-speed: setup
	$(PY) -m benchmarks.encoder_speed --out benchmarks/results/encoder_speed.json
	$(PY) -m benchmarks.speed_bm25 --out benchmarks/results/speed_bm25.json
	$(PY) -m benchmarks.speed_faiss --out benchmarks/results/speed_faiss.json
	$(PY) -m benchmarks.index_speed --n 100000 --backend auto --out benchmarks/results/index_speed.json
	$(PY) -m benchmarks.load --synthetic 1000000 --concurrency 1,8,32 --duration 30 --mode hybrid \
		--compare-batching --env XLIR_BACKEND=onnx --out benchmarks/results/load_1m.json
	$(PY) -m benchmarks.load --synthetic 1000000 --synthetic-centering off --concurrency 1,8,32 --duration 30 \
		--mode hybrid --compare-batching --env XLIR_BACKEND=onnx --out benchmarks/results/load_1m_off.json

# the load and fault run of issue 6: 60 s at concurrency 32, 20% upserts (on a copy), lost writes, RSS (~3 min)
bench-load: setup
	$(XLIR) index data/sample/corpus.jsonl --out $(DEMO_DIR)/index --overwrite
	$(PY) -m benchmarks.load --index $(DEMO_DIR)/index --concurrency 32 --duration 60 --warmup 10 \
		--mix search=0.8,upsert=0.2 --out benchmarks/results/load_fault.json

# the serving image (docker/Dockerfile: no torch, e5-small ONNX), built with podman from a local Debian base (no
# registry is reachable), then its smoke test (docker/smoke.py: the image mounted, `xlir serve` run in it with chroot,
# searched over HTTP). Needs root, `apt-get install -y podman debootstrap`. Not part of `make test`.
IMAGE ?= xlir
IMAGE_BASE ?= xlir-base
IMAGE_MODEL ?= $(or $(XLIR_HOME),$(HOME)/.cache/xlir)/models/e5-small
IMAGE_INDEX ?= build/image/smoke-index
# the machine's CA bundle, given to pip in the build as a secret (a TLS-intercepting proxy; not kept in the image)
IMAGE_CA ?= /etc/ssl/certs/ca-certificates.crt

image: install
	$(XLIR) models fetch e5-small
	XLIR_BASE_IMAGE=$(IMAGE_BASE) docker/base.sh
	@start=$$(date +%s) && podman build --isolation chroot --format docker --build-arg BASE=$(IMAGE_BASE) \
		--build-context model=$(IMAGE_MODEL) --secret id=cacert,src=$(IMAGE_CA) -f docker/Dockerfile -t $(IMAGE) . \
		&& echo "image $(IMAGE) built in $$(( $$(date +%s) - start )) s"
	$(MAKE) --no-print-directory $(IMAGE_INDEX)/manifest.json
	$(PY) docker/smoke.py --image $(IMAGE) --index $(IMAGE_INDEX) --json build/image/smoke.json
	@echo "image $(IMAGE): $$(podman image inspect --format '{{.Size}}' $(IMAGE)) bytes"

# the smoke test's index: the sample corpus with the model the image serves, rebuilt when the indexer changes
$(IMAGE_INDEX)/manifest.json: data/sample/corpus.jsonl $(wildcard indexer/*.py)
	$(XLIR) index data/sample/corpus.jsonl --model e5-small --out $(IMAGE_INDEX) --overwrite

clean:
	rm -rf $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache
