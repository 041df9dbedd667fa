#!/usr/bin/env bash
# Makes target/gpu-check/, what scale/gpu_check.sh needs on a GPU machine besides the repository:
# the infill binary built here (release, stripped) and wheels of transformers, accelerate and peft
# with their dependencies, but not PyTorch (for a machine with PyTorch and no network). Run from
# the repository's root after .ci/run (or its scale/ lines) made target/scale-venv; PY names the
# target machine's Python version (default: this one's).
set -euo pipefail
B=target/gpu-check
PY=${PY:-$(python3 -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')}
rm -rf "$B" && mkdir -p "$B/wheels"
cargo build --release
strip -o "$B/infill" target/release/infill
# infill on the GPU itself (`--device cuda`): with this machine's CUDA toolkit, or without one
# from NVIDIA's wheels (scale/cuda_build.sh); CUDA_COMPUTE_CAP names the target GPU's (90 for an
# H100 or H200) where this machine has none. xz keeps it small (99 MB stripped, 21 MB packed).
if command -v nvcc >/dev/null; then
    cargo build --release --features cuda --target-dir target/cuda
else
    scale/cuda_build.sh
fi
strip -o "$B/infill-cuda" target/cuda/release/infill
xz -T0 -6 "$B/infill-cuda"
# Exactly the packages scale/'s tests ran with (target/scale-venv, as .ci/run makes it), less
# PyTorch and its CUDA libraries, which the machine has, and the test runner.
V=${VENV:-target/scale-venv}
"$V/bin/pip" freeze | grep -v -i -E '^(torch|nvidia|cuda|triton|pytest|iniconfig|pluggy|pygments)' \
    >"$B/requirements.txt"
python3 -m pip download -q -d "$B/wheels" --no-deps --only-binary=:all: --python-version "$PY" \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    -r "$B/requirements.txt"
du -sh "$B"
