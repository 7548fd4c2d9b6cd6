#!/usr/bin/env bash
# Compile every ptychograph/gpu/cuda/*.cu (the kernels, shipped as package data) with nvcc for
# sm_80 (A100) and sm_90 (H100), as the GPU code path would, so a syntax error or a compiler
# warning fails CI even on a machine without a GPU.
# Each file must compile on its own (no project headers): ptychograph/gpu/kernels.py hands the
# same text to NVRTC through cupy.RawModule. Skips, with a message, when nvcc is not installed.
set -euo pipefail
cd "$(dirname "$0")/.."

NVCC="${NVCC:-nvcc}"
ARCHES=(sm_80 sm_90)

if ! command -v "$NVCC" >/dev/null 2>&1; then
    echo "compile-kernels: $NVCC not found; skipping the CUDA kernel compile check"
    exit 0
fi
shopt -s nullglob
sources=(ptychograph/gpu/cuda/*.cu)
if [ ${#sources[@]} -eq 0 ]; then
    echo "compile-kernels: no ptychograph/gpu/cuda/*.cu files" >&2
    exit 1
fi

failed=0
for cu in "${sources[@]}"; do
    for arch in "${ARCHES[@]}"; do
        if "$NVCC" -std=c++17 --cubin -arch="$arch" -Werror all-warnings -o /dev/null "$cu"; then
            echo "ok      $cu ($arch)"
        else
            echo "FAILED  $cu ($arch)" >&2
            failed=1
        fi
    done
done
exit "$failed"
