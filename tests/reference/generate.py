#!/usr/bin/env python3
"""PyTorch oracle for attnlens' C++ tests.

Writes inputs, parameters and expected outputs to tests/reference/data/*.safetensors. The
fixtures are committed, so the C++ tests need no Python; this script only has to run when a
fixture is added or changed (scripts/regen-fixtures.sh installs torch and runs it).

Layout, meant to be extended by each module that needs fixtures:
  - fixturelib.py: a minimal safetensors writer (no safetensors package needed), with a reader
    used only to check every written file, and the fixture registry;
  - oracles/*.py: one module per family of fixtures, each builder registered with
    @fixture(NAME) and returning {relative path: (tensors, metadata) or bytes}; every module
    there is imported, so a new family needs no edit of this file;
  - main(): `--out DIR` (default: data/ next to this script), `--only NAME` (repeatable) to
    rebuild some fixtures, `--list` to print the names.

Determinism: every fixture seeds its own random streams (from the case name, so adding a case
does not change the others), torch runs on one thread, and the JSON header is written with
sorted keys and fixed separators. Running the script twice on one machine gives byte-identical
files; on another CPU torch may pick other kernels and change the last bits (seen: 1 ulp).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from pathlib import Path
from typing import List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oracles  # noqa: E402
from fixturelib import FIXTURES, write_fixture  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "data"

# Every module under oracles/ registers its fixtures on import.
for _module in sorted(m.name for m in pkgutil.iter_modules(oracles.__path__)):
    importlib.import_module(f"oracles.{_module}")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output directory (default: %(default)s)")
    parser.add_argument("--only", action="append", metavar="NAME", choices=sorted(FIXTURES),
                        help="build only this fixture (repeatable; see --list)")
    parser.add_argument("--list", action="store_true", help="print the fixture names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(FIXTURES))
        return 0

    torch.set_num_threads(1)  # reductions in a fixed order: identical bytes on every run
    for name in args.only or FIXTURES:
        for rel, content in FIXTURES[name]().items():
            path = args.out / rel
            size = write_fixture(path, content)
            print(f"{size:9d}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
