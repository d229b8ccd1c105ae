# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.densevit-installed
DATA := data/synthetic
DEMO_CONFIG ?= configs/quickstart/upernet_resnet18_ade20k.py
DEMO_DIR := work_dirs/demo
DET_CONFIG ?= configs/quickstart/dino_vit-tiny_coco.py
DET_DIR := work_dirs/demo-dino
RECOLORED := $(DATA)/recolored/ade20k/ADEChallengeData2016

.PHONY: venv data demo test test-fast test-benchmarks benchmark clean

venv: $(STAMP)

# Reinstalled only when the package's declared dependencies change.
$(STAMP): pyproject.toml setup.cfg
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip 'setuptools>=64,<81' wheel
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

data: $(DATA)/ade20k/ADEChallengeData2016 $(DATA)/coco/annotations/instances_val2017.json \
	$(RECOLORED)

$(DATA)/ade20k/ADEChallengeData2016: | $(STAMP)
	$(PY) tools/make_synthetic.py $(DATA) --only ade20k

$(DATA)/coco/annotations/instances_val2017.json: | $(STAMP)
	$(PY) tools/make_synthetic.py $(DATA) --only coco

# The ADE20K val split again with every colour redrawn (same shapes, same labels).
$(RECOLORED): | $(STAMP)
	$(PY) tools/make_synthetic.py $(DATA)/recolored --only ade20k --num-train 0 --recolor-seed 1

demo: venv data
	$(PY) tools/train.py $(DEMO_CONFIG) --work-dir $(DEMO_DIR)
	$(PY) tools/test.py $(DEMO_CONFIG) "$$(cat $(DEMO_DIR)/last_checkpoint)" \
		--work-dir $(DEMO_DIR) --metrics-out $(DEMO_DIR)/metrics.json
	$(PY) tools/test.py $(DEMO_CONFIG) "$$(cat $(DEMO_DIR)/last_checkpoint)" \
		--work-dir $(DEMO_DIR)/recolored --metrics-out $(DEMO_DIR)/metrics-recolored.json \
		--cfg-options data_root=$(RECOLORED)/
	$(PY) tools/train.py $(DET_CONFIG) --work-dir $(DET_DIR)
	$(PY) tools/test.py $(DET_CONFIG) "$$(cat $(DET_DIR)/last_checkpoint)" \
		--work-dir $(DET_DIR) --metrics-out $(DET_DIR)/metrics.json
	$(VENV)/bin/densevit infer $(DEMO_CONFIG) "$$(cat $(DEMO_DIR)/last_checkpoint)" \
		$(DATA)/ade20k/ADEChallengeData2016/images/validation --out $(DEMO_DIR)/infer
	$(VENV)/bin/densevit infer $(DET_CONFIG) "$$(cat $(DET_DIR)/last_checkpoint)" \
		$(DATA)/coco/val2017 --out $(DET_DIR)/infer --score-thr 0.25
	$(PY) tools/demo_summary.py $(DEMO_DIR)/metrics.json $(DEMO_DIR)/metrics-recolored.json \
		$(DET_DIR)/metrics.json

test: venv data
	$(PY) -m pytest -q -n 2 --durations=15

# The costlier benchmark topics at tiny size (the rest run in make test).
test-benchmarks: venv
	$(PY) -m pytest -q -m benchmark_topic tests/test_benchmark_harness.py

test-fast: venv
	$(PY) -m pytest -q -m 'not slow'

benchmark: venv
	$(PY) tools/benchmark.py

clean:
	rm -rf $(VENV) work_dirs
