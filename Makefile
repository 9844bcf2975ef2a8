# magicoder-repro — two commands on a fresh machine:
#   make reproduce   set up, then run the embedded-default pipeline end to end (runs/tiny/)
#   make test        set up, then the quick suite: unit tests and one end-to-end smoke run
#   make test-all    set up, then every test, the slow self-tests included
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
# The exact versions the tests last passed with; `make setup` installs those and no others
# (pyproject.toml keeps ranges for people who install the package into their own environment).
# Refresh on purpose with `make lock`, which resolves anew, then reinstalls and runs every test.
LOCK           ?= requirements.lock

# Busy-waiting OpenMP threads made CPU training 10x slower on a loaded 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup toolchains reproduce ablate test test-all lock doctor clean-runs

setup: $(STAMP)

# llama-cpp-python has no wheel on the registry: the first install compiles it (~5-15 min on
# 2 cores); pip caches the wheel. The AMX crash of the default build is avoided at run time
# (repro/models.py), so no CPU-specific build flags are needed.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c $(LOCK) $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install -c $(LOCK) -e ".[$(EXTRAS)]"
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

# The quick loop after each change (about 10 min on 2 cores): everything but the slow self-tests
# and the end-to-end runs other than the smoke one.
test: setup
	$(BIN)/python -m pytest -m "not slow and (not e2e or quick)"

test-all: setup
	$(BIN)/python -m pytest

# Resolve every dependency anew (the newest releases pyproject.toml allows), write them to
# $(LOCK), then rebuild the environment from it and run every test: commit the lock only if
# they pass. torch is left out: it is pinned by TORCH_SPEC, whose build (CPU, CUDA) varies.
lock:
	rm -rf $(VENV).lock
	$(PYTHON) -m venv $(VENV).lock
	$(VENV).lock/bin/pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(VENV).lock/bin/pip install -e ".[$(EXTRAS)]"
	{ echo "# Exact versions for make setup (pip constraints); refresh with: make lock"; \
	  $(VENV).lock/bin/pip freeze --exclude-editable | grep -viE '^(torch|magicoder-repro)[=@ ]'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(VENV).lock $(VENV)
	$(MAKE) --no-print-directory test-all

doctor: setup
	$(BIN)/repro doctor

clean-runs:
	rm -rf runs/
