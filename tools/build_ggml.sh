#!/usr/bin/env bash
# Build llama.cpp's ggml-base library (ggml.c, ggml-quants.c: the reference quantizers) from
# the llama-cpp-python source distribution on PyPI, for the byte-for-byte K-quant test
# (tests/test_gguf_kquants.py reads LITECOMP_GGML_LIB).  About a minute on 2 cores; nothing
# of llama.cpp is installed or committed.
#   bash tools/build_ggml.sh [DIR]     -> DIR/libggml-base.so (default /tmp/litecomp-ggml)
set -euo pipefail
DIR=${1:-/tmp/litecomp-ggml}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
mkdir -p "$DIR"
if [ -f "$DIR/libggml-base.so" ]; then echo "$DIR/libggml-base.so"; exit 0; fi
SRC=$DIR/src
mkdir -p "$SRC"
python -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$SRC"
tar xzf "$SRC/llama_cpp_python-$VERSION.tar.gz" -C "$SRC"
LLAMA=$SRC/llama_cpp_python-$VERSION/vendor/llama.cpp
# GGML_NATIVE=OFF: a portable build; the reference quantizers live in ggml-base, which is
# compiled without -mfma either way, so no fused multiply-add changes their rounding.
cmake -S "$LLAMA" -B "$DIR/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
    -DBUILD_SHARED_LIBS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF > "$DIR/cmake.log"
cmake --build "$DIR/build" --target ggml-base -j "$(nproc)" > "$DIR/build.log"
cp "$(find "$DIR/build" -name 'libggml-base.so*' -type f | head -1)" "$DIR/libggml-base.so"
rm -rf "$SRC" "$DIR/build"
echo "$DIR/libggml-base.so"
