# Shared by scripts/run-demo.sh and scripts/run-tests.sh: install the Debian packages that are
# missing, and configure and build one CMake build directory.

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
jobs=$(nproc 2>/dev/null || echo 2)

# ensure_packages PKG...: installs whichever of the packages dpkg does not report installed.
ensure_packages() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    echo "Missing Debian packages. Install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "Installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# The packages every build needs (README.md, "Use it from CMake", and docs/architecture.md).
# PLplot draws the training curves (attnlens::plot, found through pkg-config); its PNG device
# is in the cairo driver, a package of its own.
build_packages=(g++ cmake make pkg-config libeigen3-dev libgtest-dev libbenchmark-dev
                nlohmann-json3-dev libcli11-dev libstb-dev zlib1g-dev libplplot-dev
                plplot-driver-cairo)

# configure_and_build BUILD_DIR [CMAKE_ARGS...]
configure_and_build() {
  local dir=$1
  shift
  cmake -S "$repo_root" -B "$dir" -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
  cmake --build "$dir" --parallel "$jobs"
}
