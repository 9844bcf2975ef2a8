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
# The triton that TORCH_SPEC's Linux wheels on PyPI require (torch 2.13.0: triton==3.7.1). A CPU
# build of torch requires none, so `make lock` would otherwise lock the newest triton, and pip
# then refuses the lock beside PyPI's torch (ResolutionImpossible) on every machine but this one.
TRITON_SPEC    ?= triton==3.7.1
EXTRAS         ?= dev,embedded-models
PROFILE        ?= tiny
# llama-cpp-python's build: empty = detect (tools/build-choice: cuda where nvidia-smi lists a GPU
# and nvcc is found, else cpu), or GPU=cuda / GPU=cpu. A cuda build targets CUDA_ARCHITECTURES
# (CMake's: native = the GPUs of this machine; e.g. 89 to build for an RTX 4090 elsewhere).
GPU                ?=
CUDA_ARCHITECTURES ?= native
# The exact versions the tests last passed with; `make setup` installs those and no others
# (pyproject.toml keeps ranges for people who install the package into their own environment).
# Refresh on purpose with `make lock`, which resolves anew, then reinstalls and runs every test.
LOCK           ?= requirements.lock

# Busy-waiting OpenMP threads made CPU training 10x slower on a loaded 2-core machine.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: setup toolchains reproduce ablate test test-all lock doctor clean-runs FORCE

setup: $(STAMP)

# What the last `make setup` installed: $(VENV)/.llama-build says cpu or cuda, the stamp
# "extras=dev,embedded-models,...". A stamp from before these were recorded is empty: that
# environment is a CPU build with the default extras.
comma := ,
empty :=
space := $(empty) $(empty)
SETUP_DONE   := $(if $(wildcard $(STAMP)),$(or $(shell cat $(STAMP) 2>/dev/null),extras=dev$(comma)embedded-models))
LLAMA_BUILT  := $(or $(shell cat $(VENV)/.llama-build 2>/dev/null),$(if $(SETUP_DONE),cpu))
SETUP_EXTRAS := $(subst $(comma), ,$(patsubst extras=%,%,$(filter extras=%,$(SETUP_DONE))))
# PROFILE=workstation needs the hub extra (its teacher is hf://...) and, with a cuda build, the
# cuda one (Unsloth: it needs a GPU, so a cpu build leaves it out). $(1): the build.
# PROFILE=cpu-large needs the teacher-1p5b extra (the 1.5B embedded teacher).
PROFILE_EXTRAS = $(if $(filter workstation,$(PROFILE)),hub $(if $(filter cuda,$(1)),cuda)) \
                 $(if $(filter cpu-large,$(PROFILE)),teacher-1p5b)
# Set up again when GPU= asks for another build than the installed one, or an extra is missing
# (make reproduce PROFILE=workstation after make setup). The build is detected when the
# environment is first made; afterwards, without GPU=, it is kept (a working cuda build is not
# replaced behind your back); GPU=auto detects anew whenever the environment is set up again.
WANT_BUILD   := $(or $(filter cuda cpu,$(GPU)),$(LLAMA_BUILT))
SETUP_STALE  := $(if $(SETUP_DONE),$(filter-out $(LLAMA_BUILT),$(WANT_BUILD)) \
                  $(filter-out $(SETUP_EXTRAS),$(subst $(comma), ,$(EXTRAS)) $(call PROFILE_EXTRAS,$(WANT_BUILD))))

# Only while the environment is being (re)built: the build, chosen once (its line, on stderr,
# says why; tools/build-choice prints nothing on stdout on an error such as GPU=cuda without
# nvcc), and what it implies.
LLAMA_KEPT   := $(if $(GPU),,$(LLAMA_BUILT))
LLAMA_CHOOSE  = $(if $(LLAMA_KEPT),$(LLAMA_KEPT)$(shell echo "llama.cpp build: $(LLAMA_KEPT) (the one \
                  installed; GPU=auto detects anew, GPU=cuda or GPU=cpu chooses)" >&2), \
                  $(shell GPU='$(GPU)' CUDA_ARCHITECTURES='$(CUDA_ARCHITECTURES)' tools/build-choice))
LLAMA_BUILD   = $(eval LLAMA_BUILD := $$(strip $$(LLAMA_CHOOSE)))$(LLAMA_BUILD)
CUDA_BUILD    = $(filter cuda,$(LLAMA_BUILD))
SETUP_EXTRAS_NOW = $(subst $(space),$(comma),$(sort $(subst $(comma), ,$(EXTRAS)) \
                     $(call PROFILE_EXTRAS,$(LLAMA_BUILD)) $(filter-out $(if $(CUDA_BUILD),,cuda),$(SETUP_EXTRAS))))
EXTRAS_WHY = $(if $(strip $(EXTRAS_WHY_)), $(strip $(EXTRAS_WHY_)))
EXTRAS_WHY_ = $(if $(filter workstation,$(PROFILE)),$(if $(CUDA_BUILD),(PROFILE=workstation adds hub \
               and cuda),(PROFILE=workstation adds hub$(comma) and cuda only with a cuda build$(comma) not this cpu one))) \
             $(if $(filter cpu-large,$(PROFILE)),(PROFILE=cpu-large adds teacher-1p5b))
# llama.cpp's CMake options, read by llama-cpp-python's build from CMAKE_ARGS. pip caches the
# wheel it builds under the name and version alone, so the cuda build bypasses the cache
# (--no-binary alone does not, since pip 23.1) and any wheel an index or find-links offers: it is
# compiled anew from the sdist, and not cached, so that a later cpu build still finds the cpu wheel.
# A cuda build (or a switch back to cpu: --force-reinstall) is installed on its own, before the
# package; the cpu build comes with the package, from pip's cache, as it always has.
LLAMA_REPLACE = $(if $(filter-out $(LLAMA_BUILT),$(LLAMA_BUILD)),$(if $(LLAMA_BUILT)$(CUDA_BUILD),--force-reinstall --no-deps))
LLAMA_INSTALL = $(strip $(if $(CUDA_BUILD),CMAKE_ARGS="-DGGML_CUDA=on \
                  -DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCHITECTURES) -DCMAKE_CUDA_COMPILER=$(shell tools/build-choice --nvcc)" \
                  $(BIN)/pip install --no-binary llama-cpp-python --no-cache-dir $(LLAMA_REPLACE) -c $(LOCK) llama-cpp-python, \
                  $(if $(LLAMA_REPLACE),$(BIN)/pip install $(LLAMA_REPLACE) -c $(LOCK) llama-cpp-python)))
# With the cuda extra, torch is named again, so that no dependency of Unsloth's swaps it for
# another version (pip says what conflicts instead); after a cuda set-up, a CPU torch is said.
KEEP_TORCH    = $(if $(filter cuda,$(subst $(comma), ,$(SETUP_EXTRAS_NOW))), "$(TORCH_SPEC)")
TORCH_NOTE    = $(if $(CUDA_BUILD),@$(BIN)/python -c "import torch; torch.version.cuda or print('note: torch ' \
                  + torch.__version__ + ' is a CPU build: training will not use the GPU; see docs/gpu.md (TORCH_SPEC, TORCH_PIP_ARGS)')")

# llama-cpp-python has no wheel on the registry: the first install compiles it (~5-15 min on
# 2 cores); pip caches the wheel. The AMX crash of the default build is avoided at run time
# (repro/models.py), so no CPU-specific build flags are needed.
$(STAMP): pyproject.toml $(LOCK) $(if $(strip $(SETUP_STALE)),FORCE)
	@$(if $(LLAMA_BUILD),echo "setup: extras $(SETUP_EXTRAS_NOW)$(EXTRAS_WHY)",exit 2)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -c $(LOCK) $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(LLAMA_INSTALL)
	echo $(LLAMA_BUILD) > $(VENV)/.llama-build
	$(BIN)/pip install -c $(LOCK) -e ".[$(SETUP_EXTRAS_NOW)]"$(KEEP_TORCH)
	$(TORCH_NOTE)
	$(BIN)/repro fetch
	echo "extras=$(SETUP_EXTRAS_NOW)" > $(STAMP)

FORCE:

# MultiPL-E's PHP and the javatuples jar every Java prompt imports, from Debian's registry. Only as
# root with apt-get (CI, containers); elsewhere evaluation marks those languages "not run" and says
# what to install. Swift is not in Debian's registry: always "not run" unless installed by hand.
# The tests need them, and every profile but tiny (which leaves MultiPL-E out); `make toolchains`
# adds them after a tiny reproduce.
toolchains:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  need=""; command -v php >/dev/null || need="$$need php-cli"; \
	  [ -f /usr/share/java/javatuples.jar ] || need="$$need libjavatuples-java"; \
	  if [ -n "$$need" ]; then echo "installing$$need (MultiPL-E toolchains)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null) \
	      || echo "note: could not install$$need; those MultiPL-E languages will be reported as not run"; fi; \
	else echo "note: not root: MultiPL-E languages without a toolchain here will be reported as not run"; fi

# PROFILE=cpu-large trains on the validated pairs and then draws the learning curve over them
# (sizes CURVE_SIZES, every HumanEval(+) and MBPP(+) problem), its report last.
CURVE_SIZES ?= 0,50,100,200,400
reproduce: setup $(if $(filter tiny,$(PROFILE)),,toolchains)
	$(BIN)/repro run --profile $(PROFILE)$(if $(filter cpu-large,$(PROFILE)), --variant oss+validated)
	$(if $(filter cpu-large,$(PROFILE)),$(BIN)/repro curve $(PROFILE)-validated --sizes $(CURVE_SIZES))
	$(if $(filter cpu-large,$(PROFILE)),$(BIN)/repro report $(PROFILE)-validated)

# Beyond the paper: the four variants (oss, +validated, +evol, +validated+evol) trained at equal
# training-set size and compared (runs/$(PROFILE)-ablation/ablation.md); reuses runs/$(PROFILE)/.
ablate: setup
	$(BIN)/repro ablate --profile $(PROFILE)

# The quick loop after each change (about 8 min on 2 cores, set-up included): everything but the
# slow self-tests and the end-to-end runs other than the smoke one. Two pytest-xdist workers, one
# test module at a time each (--dist loadscope: a module's fixtures are built once), in collection
# order, where tests/conftest.py puts the smoke run first: it (~4 min) runs on one worker while
# the other takes the unit tests, which use one core most of the time. More workers save little,
# since the smoke run is the longest path; TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 2
test: setup toolchains
	$(BIN)/python -m pytest -m "not slow and (not e2e or quick)" $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder)

test-all: setup toolchains
	$(BIN)/python -m pytest

# Resolve every dependency anew (the newest releases pyproject.toml allows), write them to
# $(LOCK), then rebuild the environment from it and run every test: commit the lock only if
# they pass. torch is left out: it is pinned by TORCH_SPEC, whose build (CPU, CUDA) varies.
lock:
	rm -rf $(VENV).lock
	$(PYTHON) -m venv $(VENV).lock
	$(VENV).lock/bin/pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(VENV).lock/bin/pip install -e ".[$(EXTRAS)]" "$(TRITON_SPEC)"
	{ echo "# Exact versions for make setup (pip constraints); refresh with: make lock"; \
	  $(VENV).lock/bin/pip freeze --exclude-editable | grep -viE '^(torch|magicoder-repro)[=@ ]'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(VENV).lock $(VENV)
	$(MAKE) --no-print-directory test-all

doctor: setup
	$(BIN)/repro doctor

clean-runs:
	rm -rf runs/
