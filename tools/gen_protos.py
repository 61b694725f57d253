"""Regenerate the Python stubs from protos/: ``python tools/gen_protos.py [OUT_DIR]``.

The one command for generated code. Output goes to common/, the source root that the client and
the server both import from (or to OUT_DIR, used by the freshness check), so imports read
``from simtrack.v1 import ...`` with no rewriting.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = Path("simtrack") / "v1"


def generate(out: Path) -> None:
    target = out / PACKAGE
    target.mkdir(parents=True, exist_ok=True)
    # Remove old output first so a deleted .proto leaves no stale module behind.
    for old in [*target.glob("*_pb2*"), *target.glob("*_connect.py")]:
        old.unlink()
    (target / "__init__.py").write_text("")
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        f"--connect-python_out={out}",
        *sources,
    ]
    # protoc finds the mypy and connect-python plugins on PATH; make this interpreter's scripts
    # visible even when its virtualenv is not activated.
    scripts = str(Path(sys.executable).parent)
    os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "common")
