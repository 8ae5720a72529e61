"""Build hook: generate the gRPC/protobuf stubs (package ``sparsemm.v1``) before packaging.

Everything else is in pyproject.toml.  The stubs are never committed: they are generated
here, before setuptools looks for the package directory ``proto/gen/sparsemm/v1`` that
pyproject.toml maps ``sparsemm.v1`` to (see proto/generate.py).
"""

import importlib.util
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent


def _generate_stubs() -> None:
    spec = importlib.util.spec_from_file_location("_sparsemm_proto", HERE / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate()


_generate_stubs()
setup()
