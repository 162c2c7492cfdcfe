# xsi_dask: `make demo` runs the main job on real data; `make test` runs the test suite.
# The demo bins the JEOL map 16x16 (--bin 16): at 1.2 counts per pixel its Poisson-scaled SVD holds nothing but
# the mean above the noise until ~250 counts per binned pixel (n_significant 1 at bin 4 and 8, 7 at 16). The zero
# peak is excluded and the NMF's endmembers counted from the data by default. The Bruker 50x50 map (380 counts
# per pixel, elements listed in the file) shows the element-aware labels: Al and Ag endmembers.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
DATA   ?= ../shared/data
DEMO   ?= demo-out

.PHONY: demo test test-all lint bench bench-analyses bench-dkl bench-gpu bench-scale bench-scale-series bench-scale-series-nocache venv install install-test install-bench clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	touch $@

venv: $(VENV)/.created

$(VENV)/.installed: $(VENV)/.created pyproject.toml
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q -e ".[test]"
	touch $@

$(VENV)/.installed-bench: $(VENV)/.installed
	$(PIP) install -q -e ".[bench]"
	touch $@

# torch (pinned in the extra: 2.13.0 is the CPU build), GPyTorch, BoTorch for xsi_dask.active
$(VENV)/.installed-active: $(VENV)/.installed
	$(PIP) install -q -e ".[active]"
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test
install-bench: $(VENV)/.installed-bench

demo: $(VENV)/.installed
	@if [ -d "$(DATA)/eds" ]; then \
	  $(VENV)/bin/xsi-dask run $(DATA)/eds/jeol_View000_0000006.pts --split 4x4 --bin 16 --out $(DEMO)/jeol_4x4 --overwrite && \
	  $(VENV)/bin/xsi-dask run $(DATA)/eds/bcf_v2_50x50px.bcf --out $(DEMO)/bruker_50 --overwrite && \
	  echo && echo "Reports: $(DEMO)/jeol_4x4/report.html and $(DEMO)/bruker_50/report.html"; \
	else \
	  echo "$(DATA) not found: running on a simulated grade91_replica montage instead"; \
	  $(VENV)/bin/xsi-dask simulate --out $(DEMO)/simulated/montage.zarr --preset grade91_replica --tiles 2x2 --tile-shape 128x128 --zero-peak 0.15 --overwrite --quiet && \
	  $(VENV)/bin/xsi-dask run $(DEMO)/simulated/montage.zarr --out $(DEMO)/simulated --overwrite && \
	  echo && echo "Report: $(DEMO)/simulated/report.html"; \
	fi

# the tests marked slow (whole runs with every analysis, the soak, whole-map tilings) run in test-all, not in CI's
# make test (kept under 20 minutes on 2 cores)
test: $(VENV)/.installed-test lint
	$(PY) -m pytest -q -m "not slow"

test-all: $(VENV)/.installed-test lint
	$(PY) -m pytest -q

# style (ruff) and the package's layering (import-linter contracts in pyproject.toml)
lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check xsi_dask tests benchmarks
	$(VENV)/bin/lint-imports

bench: $(VENV)/.installed-bench
	$(PY) benchmarks/run.py --out docs/benchmarks.md

# deep kernel learning discovery benchmark (issue #12): 10 seeds of DKL / GP(y, x) / random on the simulated
# 4D-STEM scan and montage, and the one-core step timing; `benchmarks/bench_dkl.py --quick` for a short run
bench-dkl: $(VENV)/.installed-bench $(VENV)/.installed-active
	$(PY) benchmarks/bench_dkl.py --out docs/benchmarks-dkl.md

# issue #13's figures: rotation/MCR/NMF phase recovery, k-means ARI, known spectra, Cliff-Lorimer, tile QC (~30 min)
bench-analyses: $(VENV)/.installed-bench $(VENV)/.installed-test
	$(PY) benchmarks/bench_analyses.py --out docs/benchmarks-analyses.md

# the 1.6 TB-equivalent montage (10 x 10 tiles of 1024 x 1024 x 4096): about an hour here, not in CI
bench-scale: $(VENV)/.installed-bench
	$(PY) benchmarks/bench_scale.py --report docs/benchmarks-scale.md

bench-scale-series: $(VENV)/.installed-bench
	$(PY) benchmarks/bench_scale.py --series --nmf-iter 10 --report docs/benchmarks-scale-series.md

# the same series with the tile cache off: every pass reads its tiles, at every size
bench-scale-series-nocache: $(VENV)/.installed-bench
	$(PY) benchmarks/bench_scale.py --series --nmf-iter 10 --tile-cache 0 --report docs/benchmarks-scale-series-nocache.md

# the cupy backend against numba on the same machine, DKL on the GPU, the paper-size montage on one GPU (#14):
# needs an NVIDIA GPU and the gpu extra (pip install -e '.[gpu]'); benchmarks/gpu_machine.sh runs it on a machine
# without a package index
bench-gpu: $(VENV)/.installed-bench $(VENV)/.installed-active
	$(PY) benchmarks/bench_gpu.py --report docs/benchmarks-gpu.md

clean:
	rm -rf $(DEMO) bench-out .pytest_cache
