#!/usr/bin/env bash
# Builds the compiled core with AddressSanitizer + UndefinedBehaviorSanitizer
# (CMake option NGDFAST_SANITIZE=ON) in its own build folder, next to a copy of
# the Python package, and runs the kernel tests against it with libasan
# preloaded into the (uninstrumented) Python process. Any sanitizer report
# fails the script: UBSan reports are fatal (-fno-sanitize-recover), ASan
# aborts on its first error, and the log is searched for reports that a
# subprocess might have printed.
#
# usage: tools/sanitize.sh [pytest args...]   (default: the kernel test subset below)
#        tools/sanitize.sh --build-only        (the instrumented build alone; .ci/run starts it
#                                               beside the test suite, at the lowest priority)
# env:   NGDFAST_SANITIZE_DIR   build folder (default: build/sanitize)
#        CMAKE_BUILD_PARALLEL_LEVEL   compile jobs (default: 2)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
dir=${NGDFAST_SANITIZE_DIR:-$root/build/sanitize}
py=${PYTHON:-python}
mkdir -p "$dir"

if [ ! -f "$dir/CMakeCache.txt" ]; then
  cmake -S "$root" -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g" \
    -DNGDFAST_SANITIZE=ON -DSKBUILD_PROJECT_NAME=ngdfast -DSKBUILD_PROJECT_VERSION=0.0.0 \
    -DPython_EXECUTABLE="$(command -v "$py")" \
    -Dpybind11_DIR="$("$py" -m pybind11 --cmakedir)" >"$dir/configure.log" 2>&1 \
    || { tail -30 "$dir/configure.log"; exit 1; }
fi
cmake --build "$dir" -j"${CMAKE_BUILD_PARALLEL_LEVEL:-2}" >"$dir/build.log" 2>&1 || { tail -40 "$dir/build.log"; exit 1; }
if [ "${1:-}" = "--build-only" ]; then
  echo "sanitize: built ($dir)"
  exit 0
fi

# The package from this checkout with the instrumented core beside it.
pkg=$dir/pkg
rm -rf "$pkg" && mkdir -p "$pkg"
cp -r "$root/python/ngdfast" "$pkg/"
rm -f "$pkg"/ngdfast/_core*.so
cp "$dir"/_core*.so "$pkg/ngdfast/"

# libasan first; libstdc++ too, or ASan's __cxa_throw interceptor finds no
# real __cxa_throw in a C program (python) and aborts on the first C++ throw.
libasan=$(${CXX:-c++} -print-file-name=libasan.so)
libstdcxx=$(${CXX:-c++} -print-file-name=libstdc++.so)
[ -f "$libasan" ] || { echo "sanitize: libasan.so not found ($libasan)" >&2; exit 1; }
preload="$libasan $libstdcxx"

if [ "$#" -eq 0 ]; then
  # Every blocking threshold of csrc/ against the reference (both tile
  # engines, 1-2 threads, borrowed products), concurrent callers, the
  # large-size / fork / Ctrl-C cases, and the end of the process (daemon
  # threads inside kernels at exit, sys.exit, os._exit, Ctrl-C: children that
  # inherit this environment, the preload included): a few minutes on 2 cores.
  set -- tests/test_backends.py tests/test_threads.py tests/test_safety.py tests/test_exit.py
fi

log=$dir/pytest.log
status=0
# CPython leaks by design: leak detection off. A failed allocation returns
# null (C++ new throws bad_alloc -> MemoryError, as tested) instead of
# aborting. PYTHONMALLOC=malloc lets ASan
# see every Python allocation (NumPy buffers included).
env PYTHONPATH="$pkg" LD_PRELOAD="$preload" PYTHONMALLOC=malloc NGDFAST_SANITIZED=1 \
  ASAN_OPTIONS="detect_leaks=0:allocator_may_return_null=1:abort_on_error=1:halt_on_error=1:print_stacktrace=1" \
  UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
  "$py" -m pytest -q -x -p no:cacheprovider --durations=5 "$@" 2>&1 | tee "$log" || status=$?
if grep -qE "ERROR: AddressSanitizer|runtime error:|ERROR: LeakSanitizer|SUMMARY: (Address|UndefinedBehavior)Sanitizer" "$log"; then
  echo "sanitize: sanitizer reports found (see $log)" >&2
  exit 1
fi
if [ "$status" -ne 0 ]; then
  echo "sanitize: tests failed under the sanitizers (exit $status)" >&2
  exit "$status"
fi
# Prove the instrumented core was the one tested.
env PYTHONPATH="$pkg" LD_PRELOAD="$preload" ASAN_OPTIONS=detect_leaks=0 "$py" -c \
  "import ngdfast._core as c, sys; sys.exit(0 if c.__file__.startswith('$pkg') else 1)" \
  || { echo "sanitize: the instrumented core was not the one imported" >&2; exit 1; }
echo "sanitize: clean"
