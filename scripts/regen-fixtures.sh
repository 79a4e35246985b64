#!/usr/bin/env bash
# Regenerates the PyTorch reference fixtures in tests/reference/data (see tests/reference/README.md).
# Arguments are passed to tests/reference/generate.py, e.g. --only mha_f32, --list, --out DIR.
# Uses Debian's interpreter and its python3-torch / python3-numpy packages, not pip.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python=/usr/bin/python3

if ! "$python" -c 'import torch, numpy' >/dev/null 2>&1; then
  install=(apt-get install -y --no-install-recommends python3-torch python3-numpy)
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "regen-fixtures: $python cannot import torch and numpy; install them as root with:" >&2
    echo "  apt-get update && ${install[*]}" >&2
    exit 1
  fi
  apt-get update
  DEBIAN_FRONTEND=noninteractive "${install[@]}"
fi

cd "$root"
exec "$python" tests/reference/generate.py "$@"
