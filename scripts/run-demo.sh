#!/usr/bin/env bash
# Installs what is missing, builds attnlens (Release) and runs the demo tour.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

ensure_packages "${build_packages[@]}"
build_dir=$repo_root/build/release
configure_and_build "$build_dir" -DATTNLENS_BUILD_TESTS=OFF -DATTNLENS_BUILD_BENCHMARKS=OFF
"$build_dir/examples/attnlens_demo" "$@"
