#!/usr/bin/env bash
# Builds infill with `--features cuda` (target/cuda/release/infill) on a machine without the CUDA
# toolkit, for a GPU machine without Rust (scale/gpu_bundle.sh calls it where nvcc is missing).
# nvcc, its headers and the CUDA libraries to link against come from NVIDIA's wheels on PyPI
# (pinned below) into target/cuda-toolkit; the driver library (libcuda.so.1), which only a GPU
# machine has, is linked through a stub exporting the symbols cudarc calls, as the toolkit's own
# stubs are. The binary starts only where a driver and CUDA 13 libraries are installed.
#
#   scale/cuda_build.sh            # CUDA_COMPUTE_CAP=90 (H100, H200) unless set
set -euo pipefail
T=$PWD/target/cuda-toolkit
WHEELS=(
    nvidia-cuda-nvcc==13.5.37 nvidia-cuda-crt==13.5.37 nvidia-nvvm==13.5.37
    nvidia-cuda-runtime==13.5.37 nvidia-cuda-cccl==13.3.5.0.6 nvidia-cuda-nvrtc==13.5.37
    nvidia-cublas==13.10.0.20 nvidia-curand==10.4.5.25
)
CUDA=$T/nvidia/cu13
if [[ ! -x $CUDA/bin/nvcc ]]; then
    mkdir -p "$T/wheels"
    python3 -m pip download -q --no-deps -d "$T/wheels" "${WHEELS[@]}"
    for w in "$T"/wheels/*.whl; do
        python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$w" "$T"
    done
    chmod -R +x "$CUDA/bin" "$CUDA/nvvm/bin"
fi
# Unversioned names for the linker, and the driver's stub, built from what cudarc's bindings use
# (so cudarc must be built first: the first cargo run below stops at the link).
L=$T/link
mkdir -p "$L"
for lib in cublas cublasLt cudart nvrtc; do ln -sf "$CUDA/lib/lib$lib.so.13" "$L/lib$lib.so"; done
ln -sf "$CUDA/lib/libcurand.so.10" "$L/libcurand.so"
export PATH=$CUDA/bin:$PATH CUDA_PATH=$CUDA CUDA_ROOT=$CUDA CUDA_HOME=$CUDA LIBRARY_PATH=$L
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90} CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13040}
build() { cargo build --release --features cuda --target-dir target/cuda; }
stub() {
    local rlib
    rlib=$(ls target/cuda/release/deps/libcudarc-*.rlib | head -1)
    nm "$rlib" 2>/dev/null | awk '$1 == "U" && $2 ~ /^cu[A-Z]/ { print "void " $2 "(void) {}" }' |
        sort -u >"$L/stub.c"
    cc -shared -fPIC -o "$L/libcuda.so" -Wl,-soname,libcuda.so.1 "$L/stub.c"
}
if [[ ! -f $L/libcuda.so ]]; then
    build || true
    stub
fi
build
ls -la target/cuda/release/infill
