#!/usr/bin/env bash
# Build libllama (shared, with ggml's CPU backend, and CUDA's unless MODE=cpu) from the trimmed
# sources that bench/gpu/pack.sh carries. Used by bench/gpu/run.sh; alone:
#
#   bash bench/gpu/build_llama.sh SRC_DIR BUILD_DIR [cuda|cpu] [JOBS]
#
# Prints `LIBDIR=<dir>` (for LLAMA_CPP_LIB_PATH) and, where cuBLAS came from a Python wheel,
# `LD_LIBRARY_PATH_ADD=<dir>` (the dynamic loader must find it there at run time too).
# BUILD_CONFIGURE_ONLY=1 stops after cmake's configure step; BUILD_TARGETS overrides the target
# (default `llama`, which pulls in ggml, ggml-base, ggml-cpu and ggml-cuda).
#
# cuBLAS: ggml-cuda links it. An image whose CUDA toolkit was assembled from NVIDIA's Python wheels
# may lack it beside nvcc, while its PyTorch brings it as the `nvidia-cublas` wheel
# (nvidia/cu13/lib/libcublas.so.13, nvidia/cu13/include/cublas_v2.h): then CMake is pointed at
# those files (its cache variables CUDA_cublas_LIBRARY, CUDA_cublasLt_LIBRARY, and -I).
# GPU_BENCH_NVIDIA_ROOTS (colon-separated) names more folders holding such an `nvidia/` tree.
set -uo pipefail
SRC=$1
BUILD=$2
MODE=${3:-cuda}
JOBS=${4:-$(nproc)}
PY=${PYTHON:-python3}
ARCH=${GPU_BENCH_CUDA_ARCH:-90}

args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON -DGGML_NATIVE=ON
      -DLLAMA_BUILD_COMMON=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF)
if [ "$MODE" = cuda ]; then
  args+=(-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$ARCH" -DGGML_CUDA_FA_ALL_QUANTS=OFF -DGGML_CUDA_NCCL=OFF)
  command -v nvcc >/dev/null || { [ -x /usr/local/cuda/bin/nvcc ] && export PATH=/usr/local/cuda/bin:$PATH; }
  echo "nvcc: $(command -v nvcc) ($(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*'))"
  tk=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  if ! ls "$tk"/lib64/libcublas.so* "$tk"/lib/libcublas.so* "$tk"/targets/*/lib/libcublas.so* >/dev/null 2>&1; then
    # the wheel that PyTorch depends on
    whl=$("$PY" - <<'EOF'
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
# GPU_BENCH_NVIDIA_ROOTS: more folders holding nvidia/<...>/lib (a wheel unpacked elsewhere)
roots += [os.path.join(d, "nvidia") for d in os.environ.get("GPU_BENCH_NVIDIA_ROOTS", "").split(":") if d]
for r in roots:
    for lib in sorted(glob.glob(os.path.join(r, "*", "lib", "libcublas.so.*")) + glob.glob(os.path.join(r, "cublas", "lib", "libcublas.so.*"))):
        d = os.path.dirname(os.path.dirname(lib))
        if os.path.isfile(os.path.join(d, "include", "cublas_v2.h")):
            print(d)
            raise SystemExit
EOF
)
    if [ -n "$whl" ]; then
      lib=$(ls "$whl"/lib/libcublas.so.* | head -1)
      lt=$(ls "$whl"/lib/libcublasLt.so.* | head -1)
      echo "cuBLAS: not in the toolkit at $tk; using the Python wheel's $whl"
      args+=(-DCUDA_cublas_LIBRARY="$lib" -DCUDA_cublasLt_LIBRARY="$lt"
             -DCMAKE_CUDA_FLAGS="-I$whl/include" -DCMAKE_CXX_FLAGS="-I$whl/include")
      echo "LD_LIBRARY_PATH_ADD=$whl/lib"
    else
      echo "cuBLAS: neither in the toolkit at $tk nor as a Python wheel; the configure step will say what is missing"
    fi
  fi
  # The driver library (CUDA::cuda_driver, for ggml's virtual-memory pool): the toolkit's stub, else
  # the installed driver's libcuda.so.1, else build without that pool (GGML_CUDA_NO_VMM).
  if ! ls "$tk"/lib64/stubs/libcuda.so "$tk"/lib64/libcuda.so "$tk"/targets/*/lib/stubs/libcuda.so >/dev/null 2>&1; then
    drv=$( (ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 /{print $NF}'; \
            ls /usr/local/nvidia/lib64/libcuda.so.1 /usr/lib/x86_64-linux-gnu/libcuda.so.1 /usr/lib64/libcuda.so.1 2>/dev/null) | head -1)
    if [ -n "$drv" ]; then
      echo "CUDA driver library: $drv (no stub in the toolkit)"
      args+=(-DCUDA_cuda_driver_LIBRARY="$drv")
    else
      echo "CUDA driver library: none found; building with GGML_CUDA_NO_VMM=ON"
      args+=(-DGGML_CUDA_NO_VMM=ON)
    fi
  fi
else
  args+=(-DGGML_CUDA=OFF)
fi

t0=$(date +%s)
cmake -S "$SRC" -B "$BUILD" "${args[@]}" > "$BUILD.configure.log" 2>&1
rc=$?
grep -E "CUDA|cuBLAS|Error|error" "$BUILD.configure.log" | head -20
echo "configure: rc=$rc, $(( $(date +%s) - t0 )) s"
[ $rc -eq 0 ] || { tail -30 "$BUILD.configure.log"; exit $rc; }
[ "${BUILD_CONFIGURE_ONLY:-0}" = 1 ] && exit 0
t1=$(date +%s)
# shellcheck disable=SC2086
cmake --build "$BUILD" -j "$JOBS" --target ${BUILD_TARGETS:-llama} > "$BUILD.build.log" 2>&1
rc=$?
echo "build: rc=$rc, $(( $(date +%s) - t1 )) s, $(grep -c 'Building' "$BUILD.build.log") compile steps"
[ $rc -eq 0 ] || { grep -B2 -A8 -m3 -E "error|Error" "$BUILD.build.log" | head -60; exit $rc; }
libdir=$(dirname "$(find "$BUILD" -name 'libllama.so' | head -1)")
ls "$libdir"/lib*.so* | xargs -n1 basename | tr '\n' ' '; echo
echo "LIBDIR=$libdir"
