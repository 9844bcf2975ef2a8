#!/usr/bin/env bash
# The whole pipeline's GPU paths on a lent GPU machine, in one call of at most ~9 minutes (issue 21).
# No model weights and no network there: every model is random-weight, of real architectures.
#
#   here, once:      bash bench/gpu/pack.sh                 # -> runs/gpu-carry/ (ignored)
#   on the device:   bash bench/gpu/run.sh                  # what bench/gpu_pipeline.sh calls
#   here, CPU mode:  GPU_BENCH_CPU=1 bash bench/gpu/run.sh  # the same steps, small models, the
#                                                           # installed CPU libllama, no CUDA build
#
# Every step is timed and bounded; its output goes to $OUT/gpu.log; a failing step is recorded and
# the script goes on. Findings go to $OUT/results.jsonl, and $OUT/summary.md is rewritten after
# every step (so a run cut off at its limit still leaves its figures). Files under $OUT:
# gpu.log, results.jsonl, summary.md, train-bench.json, build.log.
#
# Order (GPU mode): machine and software; unpack the carried files; libllama with CUDA built in the
# background (nice 10) while the steps that need no llama.cpp run: random GGUFs of Qwen2.5-0.5B (F16)
# and Qwen2.5-7B (Q4_K_M layout), a random Qwen2 student checkpoint, the train stage on it per
# backend (peft, triton, unsloth where it imports), bench/train.py's training throughput; then,
# with the library: the 0.5B quantized by llama.cpp, greedy GPU-vs-CPU identity, the 7B decode
# sweep at 1/8/32/64/128 sequences on the GPU with VRAM, the export stage of the trained adapter
# and its GGUF decoded on the GPU, the evaluate stage's decoding on the GPU, and last (time
# allowing) the 7B on the CPU cores at 1 and 8 sequences.
#
# Settings (environment): OUT (default runs/gpu-out), GPU_BENCH_CPU=1, GPU_BENCH_DEADLINE (seconds,
# default 510; CPU mode 1200), GPU_BENCH_WORK (default /tmp/gpu-bench), GPU_BENCH_CARRY (default
# runs/gpu-carry), GPU_BENCH_7B_LAYERS (default 28, all), GPU_BENCH_JOBS (default nproc),
# GPU_BENCH_CUDA_ARCH (default 90), PYTHON (default python3; CPU mode .venv/bin/python).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
START=$(date +%s)
CPU_MODE=${GPU_BENCH_CPU:-0}
if [ "$CPU_MODE" = 1 ]; then
  DEADLINE=${GPU_BENCH_DEADLINE:-1200}
  PY=${PYTHON:-$ROOT/.venv/bin/python}
else
  DEADLINE=${GPU_BENCH_DEADLINE:-510}
  PY=${PYTHON:-python3}
fi
OUT=${OUT:-$ROOT/runs/gpu-out}
WORK=${GPU_BENCH_WORK:-/tmp/gpu-bench}
CARRY=${GPU_BENCH_CARRY:-$ROOT/runs/gpu-carry}
JOBS=${GPU_BENCH_JOBS:-$(nproc)}
RESERVE=12          # seconds kept for the summary and the build log at the end
mkdir -p "$OUT" "$WORK"
LOG=$OUT/gpu.log
RESULTS=$OUT/results.jsonl
: > "$LOG"
: > "$RESULTS"
export GPU_BENCH_RESULTS=$RESULTS PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error TQDM_DISABLE=1 \
  OMP_WAIT_POLICY=PASSIVE

elapsed() { echo $(( $(date +%s) - START )); }
left() { echo $(( DEADLINE - RESERVE - $(elapsed) )); }
log() { echo "[$(elapsed) s] $*" >> "$LOG"; }
json_str() { printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' | tr '\n\t' '  '; }
summary() { "$PY" bench/gpu/summary.py write "$RESULTS" "$OUT/summary.md" --train-json "$OUT/train-bench.json" \
              >> "$LOG" 2>&1 || python3 bench/gpu/summary.py write "$RESULTS" "$OUT/summary.md" >> "$LOG" 2>&1; }
note() {  # a step that did not run: note STEP WHY
  log "== $1: not run: $2"
  printf '{"kind": "step", "step": "%s", "rc": null, "seconds": 0, "limit": null, "note": "%s"}\n' \
    "$1" "$(json_str "$2")" >> "$RESULTS"
  summary
}
step() {  # step NAME CAP_SECONDS COMMAND...: run it bounded by CAP and by the deadline; record it
  local name=$1 cap=$2; shift 2
  local lim; lim=$(left)
  if [ "$lim" -lt 8 ]; then note "$name" "no time left before the deadline"; return 1; fi
  [ "$cap" -lt "$lim" ] && lim=$cap
  log "== $name (limit $lim s): $*"
  local t0; t0=$(date +%s%N)
  timeout --kill-after=5 "$lim" "$@" >> "$LOG" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  log "== $name: rc $rc, $((ms / 1000)).$(( (ms % 1000) / 100 )) s"
  printf '{"kind": "step", "step": "%s", "rc": %d, "seconds": %d.%03d, "limit": %d}\n' \
    "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "$lim" >> "$RESULTS"
  summary
  return $rc
}

printf '{"kind": "run", "started": "%s", "cpu_mode": %s, "deadline": %d, "work": "%s", "python": "%s"}\n' \
  "$(date -u +%FT%TZ)" "$([ "$CPU_MODE" = 1 ] && echo true || echo false)" "$DEADLINE" "$WORK" "$PY" >> "$RESULTS"

# ---------------------------------------------------------------------------------------------
# 1. The machine and its software
step env 60 bash -c "nvidia-smi || echo 'no nvidia-smi'; (command -v nvcc >/dev/null && nvcc --version) \
  || /usr/local/cuda/bin/nvcc --version || echo 'no nvcc'; cmake --version | head -1; ninja --version; \
  nproc; free -g | head -2; df -h /tmp | tail -1; $PY bench/gpu/summary.py env"

# ---------------------------------------------------------------------------------------------
# The carried files
if [ ! -f "$CARRY/llama.cpp-src.tar.gz" ] || [ ! -f "$CARRY/py.tar.gz" ]; then
  note unpack "$CARRY has no llama.cpp-src.tar.gz / py.tar.gz: run bench/gpu/pack.sh here first and carry runs/gpu-carry"
fi
step unpack 60 bash -c "rm -rf '$WORK/src' '$WORK/py' && mkdir -p '$WORK/src' '$WORK/py' && \
  tar -xzf '$CARRY/llama.cpp-src.tar.gz' -C '$WORK/src' && tar -xzf '$CARRY/py.tar.gz' -C '$WORK/py' && \
  cat '$CARRY/MANIFEST' && du -sh '$WORK/src' '$WORK/py'"
CONV=$(ls -d "$WORK"/py/cache/llama.cpp-convert-* 2>/dev/null | head -1)
export REPRO_CACHE=$WORK/py/cache
export PYTHONPATH=$ROOT:$WORK/py/site:$CONV/gguf-py:$WORK/whl-site${PYTHONPATH:+:$PYTHONPATH}
if [ "$CPU_MODE" != 1 ] && ls "$CARRY"/wheels/*.whl >/dev/null 2>&1; then
  step wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/whl-site" "$CARRY"/wheels/*.whl
fi

# ---------------------------------------------------------------------------------------------
# 2. libllama, in the background while steps 3, 6a and 7 run. GPU mode: built with CUDA (nice 10,
#    -j JOBS). CPU mode: the carried sources only configured (CPU, and CUDA where nvcc is here),
#    and the installed CPU library used; the same waiting and reading of the result either way.
build_job() {
  if [ "$CPU_MODE" = 1 ]; then
    local rc=0
    BUILD_CONFIGURE_ONLY=1 bash bench/gpu/build_llama.sh "$WORK/src/llama.cpp" "$WORK/check-cpu" cpu 2 || rc=$?
    if command -v nvcc >/dev/null; then
      BUILD_CONFIGURE_ONLY=1 bash bench/gpu/build_llama.sh "$WORK/src/llama.cpp" "$WORK/check-cuda" cuda 2 || rc=$?
    fi
    # the installed package's own library (PYTHONPATH puts the carried llama_cpp, which has none, first)
    echo "LIBDIR=$(env -u PYTHONPATH "$PY" -c 'import importlib.util as u, os; print(os.path.join(os.path.dirname(u.find_spec("llama_cpp").origin), "lib"))')"
    return $rc
  fi
  nice -n 10 bash bench/gpu/build_llama.sh "$WORK/src/llama.cpp" "$WORK/build" cuda "$JOBS"
}
BUILD_MODE=$([ "$CPU_MODE" = 1 ] && echo "configure-only check; the installed CPU library" || echo cuda)
LIBDIR=""
LD_ADD=""
log "== build ($BUILD_MODE) in the background, -j $JOBS"
rm -f "$WORK/build.rc"
set -m  # the build in a process group of its own, so that it can be stopped as a whole
( build_job > "$WORK/build.out" 2>&1; echo "$? $(date +%s)" > "$WORK/build.rc" ) &
BUILD_PID=$!
set +m
BUILD_T0=$(date +%s)
stop_build() { [ -n "$BUILD_PID" ] && kill -TERM -- "-$BUILD_PID" 2>/dev/null; BUILD_PID=""; }
trap 'stop_build' EXIT

# ---------------------------------------------------------------------------------------------
# 3. Random-weight GGUFs; the random student checkpoint (no llama.cpp needed)
V=$WORK/py/qwen/vocab.json
if [ "$CPU_MODE" = 1 ]; then
  SMALL_ARCH=tiny; BIG_ARCH=tiny-k; BIG_LAYERS=0
else
  SMALL_ARCH=qwen2.5-0.5b; BIG_ARCH=qwen2.5-7b; BIG_LAYERS=${GPU_BENCH_7B_LAYERS:-0}
fi
SMALL_F16=$WORK/models/$SMALL_ARCH-f16.gguf
SMALL=$WORK/models/$SMALL_ARCH-q4_k_m.gguf
BIG=$WORK/models/$BIG_ARCH-q4_k_m.gguf
mkdir -p "$WORK/models"
step gguf-$SMALL_ARCH 90 "$PY" bench/gpu/random_gguf.py write --arch $SMALL_ARCH --type f16 --vocab "$V" --out "$SMALL_F16"
step gguf-$BIG_ARCH 150 "$PY" bench/gpu/random_gguf.py write --arch $BIG_ARCH --type q4_k_m --layers "$BIG_LAYERS" \
  --vocab "$V" --out "$BIG"
STUDENT=$WORK/student
step student 90 "$PY" bench/gpu/stages.py student --tokenizer "$WORK/py/qwen/tokenizer" --out "$STUDENT"

# ---------------------------------------------------------------------------------------------
# 6a. The train stage per backend; 7. training throughput (both on the GPU while the build runs)
if [ "$CPU_MODE" = 1 ]; then BACKENDS="peft"; else BACKENDS="peft triton unsloth"; fi
for b in $BACKENDS; do
  step train-$b 120 "$PY" bench/gpu/stages.py train --student "$STUDENT" --backend $b --out "$WORK/train-$b"
done
[ "$CPU_MODE" = 1 ] && note train-triton "CUDA only (CPU mode)" && note train-unsloth "CUDA only (CPU mode)"
if [ "$CPU_MODE" = 1 ]; then
  step train-bench 240 "$PY" bench/train.py --device cpu --random-init --config "$STUDENT/config.json" --runs fp32 \
    --seq 64 --batch 1 --warmup 1 --steps 2 --timeout 200 --out "$OUT/train-bench.json"
else
  step train-bench 240 "$PY" bench/train.py --device cuda --random-init --models student,qwen0.5b \
    --runs eager,triton,unsloth --steps 5 --timeout 75 --out "$OUT/train-bench.json"
fi

# ---------------------------------------------------------------------------------------------
# Wait for the library, keeping at least 110 s for the steps that need it (else the build is stopped)
if [ -n "$BUILD_PID" ]; then
  log "== waiting for the build"
  while [ ! -f "$WORK/build.rc" ] && [ "$(left)" -gt 110 ]; do sleep 2; done
  if [ -f "$WORK/build.rc" ]; then
    read -r rc end < "$WORK/build.rc"
  else
    rc=124
    end=$(date +%s)
    stop_build
    echo "stopped: after $(( end - BUILD_T0 )) s the deadline left too little time for the steps that need it" >> "$WORK/build.out"
  fi
  BUILD_PID=""
  secs=$(( end - BUILD_T0 ))
  cat "$WORK/build.out" >> "$LOG"
  LIBDIR=$(sed -n 's/^LIBDIR=//p' "$WORK/build.out" | tail -1)
  LD_ADD=$(sed -n 's/^LD_LIBRARY_PATH_ADD=//p' "$WORK/build.out" | tail -1)
  notes=$(grep -E '^(nvcc|cuBLAS|CUDA driver|configure|build|stopped):' "$WORK/build.out" \
          | while read -r l; do printf '"%s", ' "$(json_str "$l")"; done)
  printf '{"kind": "build", "mode": "%s", "rc": %d, "seconds": %d, "libdir": "%s", "notes": [%s"jobs %s"]}\n' \
    "$BUILD_MODE" "$rc" "$secs" "$LIBDIR" "$notes" "$JOBS" >> "$RESULTS"
  printf '{"kind": "step", "step": "build (background)", "rc": %d, "seconds": %d, "limit": null}\n' \
    "$rc" "$secs" >> "$RESULTS"
  summary
fi
if [ -z "$LIBDIR" ] || [ ! -f "$LIBDIR/libllama.so" ]; then
  for s in quantize greedy sweep-gpu eval export exported-decode sweep-gpu-fa-off sweep-cpu; do note $s "no libllama (see the build)"; done
else
  export LLAMA_CPP_LIB_PATH=$LIBDIR
  [ -n "$LD_ADD" ] && export LD_LIBRARY_PATH=$LD_ADD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # -------------------------------------------------------------------------------------------
  # 4. greedy identity; 5. the teacher's decode sweep; 6. export and evaluate on the GPU
  if [ "$CPU_MODE" = 1 ]; then
    GPU_PAR=1,8; GPU_TOK=16; CPU_TOK=16; EVAL_N=4; EVAL_TOK=16; GREEDY_TOK=16
  else
    GPU_PAR=1,8,32,64,128; GPU_TOK=128; CPU_TOK=32; EVAL_N=32; EVAL_TOK=128; GREEDY_TOK=64
  fi
  step quantize 90 "$PY" bench/gpu/decode.py quantize --src "$SMALL_F16" --dst "$SMALL" --quant q4_k_m
  step greedy 90 "$PY" bench/gpu/decode.py greedy --gguf "$SMALL" --prompts 4 --max-tokens $GREEDY_TOK
  step sweep-gpu 180 "$PY" bench/gpu/decode.py sweep --gguf "$BIG" --label GPU --ngl -1 --parallel $GPU_PAR \
    --max-tokens $GPU_TOK --box 130
  step eval 90 "$PY" bench/gpu/decode.py eval --gguf "$SMALL" --work "$WORK/eval" --problems $EVAL_N \
    --max-tokens $EVAL_TOK --parallel 16 --ngl -1
  if [ -f "$WORK/train-peft/adapter/adapter_config.json" ]; then
    step export 150 "$PY" bench/gpu/stages.py export --student "$STUDENT" --adapter "$WORK/train-peft/adapter" \
      --out "$WORK/export"
    step exported-decode 60 "$PY" bench/gpu/decode.py sweep --gguf "$WORK/export/model-q4_k_m.gguf" \
      --label "GPU (exported)" --ngl -1 --parallel 8 --max-tokens 64
  else
    note export "no adapter from train-peft"
    note exported-decode "no exported model"
  fi
  if [ "$CPU_MODE" != 1 ]; then  # flash attention's share: one setting again with it off
    step sweep-gpu-fa-off 60 "$PY" bench/gpu/decode.py sweep --gguf "$BIG" --label "GPU, flash_attn off" --ngl -1 \
      --parallel 64 --max-tokens $GPU_TOK --flash-attn off
  fi
  step sweep-cpu 120 "$PY" bench/gpu/decode.py sweep --gguf "$BIG" --label CPU --ngl 0 --parallel 1,8 \
    --max-tokens $CPU_TOK --box 60
fi

# ---------------------------------------------------------------------------------------------
# 8. The summary
stop_build
{ [ -f "$WORK/build.configure.log" ] && tail -40 "$WORK/build.configure.log"
  [ -f "$WORK/build.build.log" ] && tail -150 "$WORK/build.build.log"; } > "$OUT/build.log" 2>/dev/null
[ -s "$OUT/build.log" ] || rm -f "$OUT/build.log"
log "== done in $(elapsed) s"
printf '{"kind": "step", "step": "total", "rc": 0, "seconds": %d, "limit": %d}\n' "$(elapsed)" "$DEADLINE" >> "$RESULTS"
summary
cat "$OUT/summary.md"
