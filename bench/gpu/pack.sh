#!/usr/bin/env bash
# Pack, here and beforehand, what bench/gpu/run.sh needs on a lent GPU machine that git does not
# track, into runs/gpu-carry/ (ignored through .gitignore's `runs/`; name it in the device call's
# `carry`):
#
#   llama.cpp-src.tar.gz  the llama.cpp sources of the installed llama-cpp-python (its source
#                         archive's vendor/llama.cpp), trimmed to what libllama with ggml's CPU and
#                         CUDA backends needs: no models/vocab files, tests, examples, tools, docs,
#                         or other backends (Vulkan, SYCL, Metal, CANN, OpenCL, MUSA, HIP, ...)
#   py.tar.gz             site/: llama_cpp's Python files (no shared libraries: run.sh points
#                         LLAMA_CPP_LIB_PATH at the libllama it builds), diskcache (llama_cpp
#                         imports it; the machine's Python lacks it), llama-cpp-python's dist-info
#                         (repro/export.py asks its version);
#                         cache/llama.cpp-convert-<version>/: the GGUF converters and gguf-py from
#                         the same archive, where repro/export.py's converter_dir() looks for them;
#                         qwen/: Qwen2.5's vocabulary (vocab.json for random GGUFs, tokenizer/ for a
#                         random Qwen2 checkpoint), read from the embedded Qwen GGUF: no weights
#   wheels/duckdb-*.whl   duckdb for CPython 3.12 (the machine's), which repro.train.run imports
#   MANIFEST              what is where, sizes, sha256
#
#   bash bench/gpu/pack.sh [--sdist llama_cpp_python-X.tar.gz]
#
# Without --sdist the source archive (76 MB) is downloaded once through the package registry into
# $GPU_PACK_CACHE (default /tmp/gpu-pack-cache). Ends by checking that the tracked files plus this
# folder stay under the device tool's 64 MiB.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
DEST=$ROOT/runs/gpu-carry
CACHE=${GPU_PACK_CACHE:-/tmp/gpu-pack-cache}
SDIST=""
while [ $# -gt 0 ]; do
  case $1 in
    --sdist) SDIST=$2; shift 2 ;;
    *) echo "usage: $0 [--sdist llama_cpp_python-X.tar.gz]" >&2; exit 2 ;;
  esac
done

SITE=$("$PY" -c 'import llama_cpp, os; print(os.path.dirname(os.path.dirname(llama_cpp.__file__)))')
VER=$("$PY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')
echo "llama-cpp-python $VER (from $SITE)"
if [ -z "$SDIST" ]; then
  mkdir -p "$CACHE"
  SDIST=$CACHE/llama_cpp_python-$VER.tar.gz
  if [ ! -f "$SDIST" ]; then
    "$PY" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$VER" -d "$CACHE" -q
  fi
fi
[ -f "$SDIST" ] || { echo "no source archive at $SDIST" >&2; exit 1; }

STAGE=$(mktemp -d /tmp/gpu-pack.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
P=llama_cpp_python-$VER/vendor/llama.cpp
tar -xzf "$SDIST" -C "$STAGE" "$P/CMakeLists.txt" "$P/cmake" "$P/ggml" "$P/src" "$P/include" "$P/vendor" \
  "$P/LICENSE" "$P/licenses" "$P/convert_hf_to_gguf.py" "$P/convert_lora_to_gguf.py" "$P/conversion" "$P/gguf-py"
L=$STAGE/$P

# The converters (as repro/export.py's fetch_converter keeps them), out of the source tree.
CONV=$STAGE/py/cache/llama.cpp-convert-$VER
mkdir -p "$CONV"
mv "$L/convert_hf_to_gguf.py" "$L/convert_lora_to_gguf.py" "$L/conversion" "$L/gguf-py" "$CONV/"
cp "$L/LICENSE" "$CONV/"
rm -rf "$CONV/gguf-py/tests"

# The build tree: ggml's CPU and CUDA backends only (the others are added only when switched on).
for b in blas cann et hexagon hip metal musa opencl openvino rpc sycl virtgpu vulkan webgpu zdnn zendnn; do
  rm -rf "$L/ggml/src/ggml-$b"
done
rm -rf "$L/vendor/cpp-httplib"  # only for llama.cpp's common library, which run.sh does not build
find "$L" -name '*.md' -delete
mkdir -p "$STAGE/src" && mv "$L" "$STAGE/src/llama.cpp"

# Python side
mkdir -p "$STAGE/py/site"
cp -r "$SITE/llama_cpp" "$SITE/diskcache" "$STAGE/py/site/"
rm -rf "$STAGE/py/site/llama_cpp/lib" "$STAGE/py/site/llama_cpp/server"
find "$STAGE/py" -name __pycache__ -type d -prune -exec rm -rf {} +
DI=$STAGE/py/site/llama_cpp_python-$VER.dist-info
mkdir -p "$DI" && cp "$SITE/llama_cpp_python-$VER.dist-info/METADATA" "$DI/"
QWEN=$("$PY" -c 'from repro.models import resolve; print(resolve("embedded:qwen2.5-coder-0.5b-instruct-q4_k_m"))')
(cd "$ROOT" && "$PY" bench/gpu/random_gguf.py vocab --gguf "$QWEN" --out "$STAGE/py/qwen") 2>&1 | grep -v -i warn || true
[ -f "$STAGE/py/qwen/vocab.json" ] && [ -f "$STAGE/py/qwen/tokenizer/tokenizer.json" ] \
  || { echo "could not extract the Qwen vocabulary from $QWEN" >&2; exit 1; }

mkdir -p "$DEST"
rm -f "$DEST"/*.tar.gz "$DEST/MANIFEST"
# duckdb (repro.train.run reads clean.parquet with it; the machine's Python 3.12 lacks it), as a
# wheel for that Python, installed there by run.sh with pip --no-index --target
DUCK=$("$PY" -c 'import importlib.metadata as m; print(m.version("duckdb"))')
if [ ! -f "$DEST/wheels/duckdb-$DUCK-cp312"*.whl ]; then
  rm -rf "$DEST/wheels" && mkdir -p "$DEST/wheels"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DEST/wheels" "duckdb==$DUCK" > "$STAGE/pip.log" 2>&1 || true
fi
ls "$DEST"/wheels/duckdb-*.whl >/dev/null 2>&1 \
  || { grep -v "WARNING: Location" "$STAGE/pip.log" | tail -3
       echo "note: no duckdb $DUCK wheel for CPython 3.12 (run.sh's train steps then read clean.parquet through pyarrow)"; }
tar -czf "$DEST/llama.cpp-src.tar.gz" -C "$STAGE/src" llama.cpp
tar -czf "$DEST/py.tar.gz" -C "$STAGE/py" site cache qwen
{
  echo "# bench/gpu/pack.sh, $(date -u +%FT%TZ): llama-cpp-python $VER, $(basename "$SDIST")"
  echo "# unpacked by bench/gpu/run.sh into its work folder"
  for f in $(cd "$DEST" && ls llama.cpp-src.tar.gz py.tar.gz wheels/*.whl 2>/dev/null); do
    echo "$f $(stat -c %s "$DEST/$f") $(sha256sum "$DEST/$f" | cut -d' ' -f1)"
  done
  echo "# unpacked sizes: sources $(du -sh "$STAGE/src" | cut -f1), python $(du -sh "$STAGE/py" | cut -f1)"
} > "$DEST/MANIFEST"
cat "$DEST/MANIFEST"

# What the device call sends: tracked files + untracked files git does not ignore + this folder.
cd "$ROOT"
tracked=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
carried=$(du -sb "$DEST" | cut -f1)
total=$((tracked + carried))
printf 'working tree that travels: %.1f MiB; runs/gpu-carry: %.1f MiB; together %.1f MiB of 64 MiB\n' \
  "$(echo "$tracked / 1048576" | bc -l)" "$(echo "$carried / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
[ "$total" -lt $((60 * 1048576)) ] || { echo "too close to the 64 MiB limit" >&2; exit 1; }
