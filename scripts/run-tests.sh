#!/usr/bin/env bash
# Installs what is missing, then: the Release build and every test (ctest); the unit tests
# again on the portable kernels (ATTNLENS_NO_AVX512=1: an AVX-512 machine would otherwise never
# run them); the whole suite under AddressSanitizer + UndefinedBehaviorSanitizer; the four
# fuzzers (safetensors, PNG, config.json, IDX) for ATTNLENS_FUZZ_SECONDS (default 40) seconds
# each, two at a time.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

# clang builds the sanitizer pass and the fuzzer. The IDX tests read the real Fashion-MNIST
# (dataset-fashion-mnist, /usr/share/datasets/fashion-mnist).
ensure_packages "${build_packages[@]}" clang libclang-rt-14-dev dataset-fashion-mnist
fuzz_seconds=${ATTNLENS_FUZZ_SECONDS:-40}
started=$SECONDS
step() { printf '\n== %s (%ds)\n' "$1" $((SECONDS - started)); }

step "Release build"
# With attnlens::compiled: the package test links a program against it, and the tests link it
# (tests/CMakeLists.txt). The benchmarks run in no test: the sanitizer build below compiles them,
# at a third of the cost of g++ -O3.
configure_and_build "$repo_root/build/release" -DATTNLENS_BUILD_COMPILED=ON \
  -DATTNLENS_BUILD_BENCHMARKS=OFF
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
# run_ctest BUILD_DIR LOG [CTEST_ARGS...]: ctest with its output kept for the summary.
run_ctest() {
  local dir=$1 log=$2
  shift 2
  (cd "$dir" && ctest --output-on-failure --parallel "$jobs" "$@") 2>&1 | tee "$log"
}
# tests_run LOG: the "out of N" count of a ctest summary.
tests_run() { sed -n 's/.*tests failed out of \([0-9]*\).*/\1/p' "$1"; }

step "Release tests"
run_ctest "$repo_root/build/release" "$logs/release.log"

step "Release tests, portable kernels (ATTNLENS_NO_AVX512=1)"
# The package test and the Python side of the interop round trips (label python) exercise no
# kernel: the Release pass runs them once.
ATTNLENS_NO_AVX512=1 run_ctest "$repo_root/build/release" "$logs/portable.log" \
  --label-exclude "package|python"

step "Sanitizer build (clang; address, undefined), fuzzers, benchmarks"
sanitize="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
# clang -O0 -g1: about a third of the CPU time of g++ -O1 for these Eigen-heavy tests (the
# tests themselves run slower unoptimized, far less than the compile saves); line numbers in
# reports. The tests link attnlens::compiled here too (built with the same flags), so the
# templates it instantiates are compiled once; the header-only use is what the CLI, the fuzzers
# and the package test's consumer build. The fuzzers are built here (their own -O1 and
# -fsanitize=fuzzer on top), and the benchmarks, which nothing runs, are compiled for the
# check. The demo is run by no test either; the Release build has it.
configure_and_build "$repo_root/build/sanitize" -DCMAKE_BUILD_TYPE=None \
  -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_CXX_FLAGS="-O0 -g1 $sanitize" -DCMAKE_EXE_LINKER_FLAGS="$sanitize" \
  -DATTNLENS_BUILD_DEMO=OFF -DATTNLENS_BUILD_COMPILED=ON -DATTNLENS_BUILD_FUZZERS=ON
step "Sanitizer tests"
# tests/lsan.supp: fontconfig's font cache (under PLplot's text), reported once per process.
# ATTNLENS_GRADIENT_CHECK_ENTRIES: the finite-difference checks visit 8 entries per tensor here
# (tests/support/gradient_check.hpp): every code path runs, and the Release passes above check
# every entry's value.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  LSAN_OPTIONS=suppressions="$repo_root/tests/lsan.supp" ATTNLENS_GRADIENT_CHECK_ENTRIES=8 \
  run_ctest "$repo_root/build/sanitize" "$logs/sanitize.log" --label-exclude "package|python"

step "Thread pool under ThreadSanitizer"
# core/thread_pool.hpp hands items out through atomics; ThreadSanitizer checks its protocol on
# parallel_for's tests (many short jobs, nested loops, concurrent callers), three runs.
clang++ -std=c++17 -O1 -g -fsanitize=thread -DATTNLENS_THREADS -I"$repo_root/include" \
  -I/usr/include/eigen3 "$repo_root/tests/core/test_parallel.cpp" -lgtest -lgtest_main -pthread \
  -o "$logs/test_parallel_tsan"
for run in 1 2 3; do
  TSAN_OPTIONS=halt_on_error=1 "$logs/test_parallel_tsan" --gtest_brief=1
done

# fuzz NAME DICT CORPUS: one fuzzer for fuzz_seconds, on a copy of its committed seed corpus;
# its log in $logs/fuzz_NAME.log and its exit status in $logs/fuzz_NAME.status.
fuzz() {
  local name=$1 dict=$2 seeds=$3 status=0
  mkdir "$logs/corpus_$name"
  "$repo_root/build/sanitize/fuzz/fuzz_$name" -max_total_time="$fuzz_seconds" \
    -dict="$repo_root/fuzz/$dict" -print_final_stats=1 \
    "$logs/corpus_$name" "$repo_root/fuzz/$seeds" >"$logs/fuzz_$name.log" 2>&1 || status=$?
  echo "$status" >"$logs/fuzz_$name.status"
}
# fuzz_report NAME: its statistics, or its log's end and a failure.
fuzz_report() {
  local name=$1 status
  status=$(cat "$logs/fuzz_$name.status")
  echo "fuzz_$name:"
  grep -E "^(stat::number_of_executed_units|Done [0-9]+ runs)" "$logs/fuzz_$name.log" || true
  if ((status != 0)); then
    tail -n 40 "$logs/fuzz_$name.log"
    echo "fuzz_$name failed (exit $status)"
    exit 1
  fi
}
# Each fuzzer is one process on one core: two at a time.
step "Fuzzing safetensors and png for ${fuzz_seconds}s"
fuzz safetensors safetensors.dict corpus & fuzz png png.dict corpus_png & wait
fuzz_report safetensors
fuzz_report png
step "Fuzzing model_config and idx for ${fuzz_seconds}s"
fuzz model_config config.dict corpus_config & fuzz idx idx.dict corpus_idx & wait
fuzz_report model_config
fuzz_report idx

step "All done"
# Every ctest run passed (set -e and pipefail stop on a failure), so every test counted passed.
total=$(($(tests_run "$logs/release.log") + $(tests_run "$logs/portable.log") +
  $(tests_run "$logs/sanitize.log")))
echo "run-tests: $total passed, 0 failed"
