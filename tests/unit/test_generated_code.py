"""The checked-in stubs in common/simtrack/v1 are exactly what tools/gen_protos.py produces.

If this fails, the protos (or the pinned grpcio-tools / mypy-protobuf) changed without the
stubs being regenerated: run ``python tools/gen_protos.py`` and commit the result.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from google.protobuf.descriptor import FileDescriptor

ROOT = Path(__file__).resolve().parents[2]
GEN_SCRIPT = ROOT / "tools" / "gen_protos.py"
CHECKED_IN = ROOT / "common" / "simtrack" / "v1"
FIX_HINT = "stale generated code: run `python tools/gen_protos.py` and commit common/simtrack/v1"

EXPECTED_SERVICES = {
    "AgentService",
    "ArtifactService",
    "ExperimentService",
    "RunService",
    "ScenarioService",
    "TelemetryService",
    "ValidationService",
}


def _stub_files(root: Path) -> dict[str, bytes]:
    """Relative path -> content of every generated file under root (bytecode caches ignored)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }


def _regenerate(out: Path) -> None:
    # protoc finds its plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) on PATH; put this
    # interpreter's scripts directory first so an un-activated virtualenv works too.
    scripts = [sysconfig.get_path("scripts"), str(Path(sys.executable).parent)]
    env = dict(os.environ, PATH=os.pathsep.join([*scripts, os.environ.get("PATH", "")]))
    result = subprocess.run(
        [sys.executable, str(GEN_SCRIPT), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, (
        f"tools/gen_protos.py failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
    )


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    _regenerate(tmp_path)
    fresh = _stub_files(tmp_path / "simtrack" / "v1")
    current = _stub_files(CHECKED_IN)
    assert fresh, "tools/gen_protos.py produced no files"

    missing = sorted(fresh.keys() - current.keys())
    extra = sorted(current.keys() - fresh.keys())
    different = sorted(
        name for name in fresh.keys() & current.keys() if fresh[name] != current[name]
    )

    problems = []
    if missing:
        problems.append(f"missing from common/simtrack/v1: {', '.join(missing)}")
    if extra:
        problems.append(f"not produced by the protos (stale): {', '.join(extra)}")
    if different:
        problems.append(f"out of date: {', '.join(different)}")
    assert not problems, FIX_HINT + "\n" + "\n".join(problems)


def _generated_file_descriptors() -> dict[str, FileDescriptor]:
    package = importlib.import_module("simtrack.v1")
    descriptors: dict[str, FileDescriptor] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(f"simtrack.v1.{info.name}")
            descriptors[info.name] = module.DESCRIPTOR
    return descriptors


def test_generated_services_are_the_expected_four() -> None:
    descriptors = _generated_file_descriptors()
    assert descriptors, "no *_pb2 modules found in simtrack.v1"

    services: dict[str, str] = {}
    for module_name, file_descriptor in descriptors.items():
        assert file_descriptor.package == "simtrack.v1", module_name
        for service_name in file_descriptor.services_by_name:
            assert service_name not in services, f"{service_name} defined twice"
            services[service_name] = module_name
    assert set(services) == EXPECTED_SERVICES, FIX_HINT

    for service_name, module_name in sorted(services.items()):
        grpc_module = importlib.import_module(f"simtrack.v1.{module_name}_grpc")
        for attr in (
            f"{service_name}Stub",
            f"{service_name}Servicer",
            f"add_{service_name}Servicer_to_server",
        ):
            assert hasattr(grpc_module, attr), f"simtrack.v1.{module_name}_grpc lacks {attr}"
