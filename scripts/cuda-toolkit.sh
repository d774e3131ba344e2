#!/usr/bin/env bash
# Lays out a CUDA 13.0 build toolkit from NVIDIA's pip wheels, for `cargo build --features cuda`
# on a machine without a system CUDA toolkit (and without a GPU), then prints the environment.
#
#   eval "$(scripts/cuda-toolkit.sh)"          # fetch once (about 700 MB), then print exports
#   cargo build --release --features cuda
#
# What it does (idempotent; a second run only prints the exports):
# - `pip download`s the pinned wheels below (hash-checked) into $RRM_CUDA_DIR/wheels
#   (default ~/.cache/rrm/cuda-13.0); they all unpack into one prefix, $RRM_CUDA_DIR/nvidia/cu13,
#   with nvcc in bin/, cicc in nvvm/bin/, headers (CCCL included) in include/, libraries in lib/;
# - adds the unversioned library names the linker looks for (libcublas.so → libcublas.so.13, …);
# - builds a link stub lib/stubs/libcuda.so (soname libcuda.so.1) from cuda.h: the driver library
#   comes with the GPU driver, never with the wheels. Every stub function returns
#   CUDA_ERROR_STUB_LIBRARY, so a CUDA build run here fails cleanly at device creation.
#
# Pinned to CUDA 13.0: the GPU machine's driver (580) supports CUDA 13.0, and the PTX that nvcc
# writes must not be newer than what the driver can compile. Exports: CUDA_HOME (cudarc finds the
# libraries under it), PATH (cudaforge and cudarc run `nvcc`), CUDARC_CUDA_VERSION,
# CUDA_COMPUTE_CAP (90: Hopper, sm_90a; override it before running this for another GPU).
# Needs: python3 with pip, gcc/g++ (nvcc's host compiler), about 2 GB of disk.
set -euo pipefail

dir="${RRM_CUDA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rrm/cuda-13.0}"
prefix="$dir/nvidia/cu13"
cap="${CUDA_COMPUTE_CAP:-90}"

log() { echo "cuda-toolkit: $*" >&2; }

if [[ ! -f "$prefix/.complete" ]]; then
    mkdir -p "$dir/wheels"
    req="$dir/requirements.txt"
    # name==version --hash: the exact wheels, checked by pip (--require-hashes).
    cat >"$req" <<'REQ'
nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-cuda-runtime==13.0.96 --hash=sha256:7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-cuda-nvrtc==13.0.88 --hash=sha256:ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
nvidia-curand==10.4.0.35 --hash=sha256:1aee33a5da6e1db083fe2b90082def8915f30f3248d5896bcec36a579d941bfc
nvidia-cublas==13.0.0.19 --hash=sha256:f6723af2e8e2600a11dc384037d90d9bf93070e346c24ef2e8f9001658c99896
REQ
    log "fetching the CUDA 13.0 wheels into $dir/wheels (about 700 MB, once)"
    python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
        --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux_2_12_x86_64 \
        --platform manylinux2010_x86_64 \
        -d "$dir/wheels" -r "$req" >&2
    rm -rf "$dir/nvidia"
    for wheel in "$dir"/wheels/*.whl; do
        log "unpacking $(basename "$wheel")"
        python3 -m zipfile -e "$wheel" "$dir/unpack" >&2
    done
    mv "$dir/unpack/nvidia" "$dir/nvidia"
    rm -rf "$dir/unpack"
    # zipfile drops the executable bits.
    chmod +x "$prefix"/bin/* "$prefix"/nvvm/bin/*
    # Unversioned names for the linker (`-lcublas` looks for libcublas.so).
    for lib in "$prefix"/lib/lib*.so.*; do
        base="${lib##*/}"
        ln -sf "$base" "$prefix/lib/${base%%.so.*}.so"
    done
    # A link stub for the driver library: every function cuda.h declares (both API flavours),
    # returning CUDA_ERROR_STUB_LIBRARY (34).
    mkdir -p "$prefix/lib/stubs"
    names="$dir/cuda-driver-functions.txt"
    for flags in "" "-DCUDA_API_PER_THREAD_DEFAULT_STREAM"; do
        gcc -E -P -x c $flags -I"$prefix/include" "$prefix/include/cuda.h"
    done | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | tr -d ' (' | sort -u >"$names"
    grep -oE '^[[:space:]]*(CUresult|extern CUresult)[[:space:]]+CUDAAPI[[:space:]]+cu[A-Za-z0-9_]+' \
        "$prefix/include/cuda.h" | awk '{print $NF}' >>"$names"
    sort -u -o "$names" "$names"
    awk '{printf "int %s(void) { return 34; }\n", $1}' "$names" >"$prefix/lib/stubs/libcuda-stub.c"
    gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$prefix/lib/stubs/libcuda.so" \
        "$prefix/lib/stubs/libcuda-stub.c"
    ln -sf libcuda.so "$prefix/lib/stubs/libcuda.so.1"
    log "libcuda stub: $(wc -l <"$names") functions"
    "$prefix/bin/nvcc" --version >&2
    touch "$prefix/.complete"
fi

cat <<ENV
export CUDA_HOME="$prefix"
export PATH="$prefix/bin:\$PATH"
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP=$cap
ENV
