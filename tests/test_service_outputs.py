"""Tables written on the server (OutputOptions.ranef_path / fitted_path, --output-root).

Confinement as for the data roots (no "..", nothing outside the root, no symlinks
below it, checked again when the worker writes), never over an existing file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sparsemm import solver
from sparsemm.server.outputs import OutputRefused, write_parquet
from sparsemm_client import Client, SparsemmError
from tests.service_helpers import CODE, FORMULA, TOKEN, config, data_root, running

S = "sleepstudy.parquet"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("outputs")
    out, outside = base / "out", base / "outside"
    out.mkdir()
    outside.mkdir()
    os.symlink(outside, out / "link")
    (out / "taken.parquet").write_bytes(b"not mine")
    return {"root": data_root(base), "out": out, "outside": outside, "state": base / "s.duckdb"}


@pytest.fixture(scope="module")
def client(dirs: dict[str, Path]) -> Iterator[Client]:
    cfg = config(dirs["root"], dirs["state"], None, workers=1, output_root=str(dirs["out"]))
    with running(cfg) as target, Client(target, token=TOKEN) as c:
        yield c


def test_tables_written_where_asked(client: Client, dirs: dict[str, Path]) -> None:
    out = dirs["out"]
    m = client.fit(FORMULA, S, ranef_path="sleep/v1/ranef.parquet",
                   fitted_path=str(out / "fitted.parquet"))  # fmt: skip
    assert m.written == {"ranef": str(out / "sleep/v1/ranef.parquet"),
                         "fitted": str(out / "fitted.parquet")}  # fmt: skip
    local = solver.fit(FORMULA, str(dirs["root"] / S))
    assert pq.read_table(m.written["ranef"]).equals(local.ranef())
    assert pq.read_table(m.written["fitted"]).num_rows == 180
    assert client.job(m.job_id).state == "SUCCEEDED"
    with pytest.raises(SparsemmError) as err:
        m.ranef()  # written there, not kept for streaming
    assert err.value.code == CODE.FAILED_PRECONDITION and "wrote this table" in err.value.message
    assert not [p for p in out.rglob(".*.tmp")]  # no temporary file left


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("../escape.parquet", CODE.PERMISSION_DENIED),
        ("/tmp/anywhere.parquet", CODE.PERMISSION_DENIED),
        ("link/through-symlink.parquet", CODE.PERMISSION_DENIED),
        ("taken.parquet", CODE.ALREADY_EXISTS),
        ("table.csv", CODE.INVALID_ARGUMENT),
        ("", None),  # not asked: kept for streaming
    ],
)
def test_output_paths_refused(client: Client, dirs: dict[str, Path], path: str, code) -> None:
    if code is None:
        assert client.fit(FORMULA, S, ranef_path=path).written == {}
        return
    with pytest.raises(SparsemmError) as err:
        client.submit(FORMULA, S, ranef_path=path)
    assert (err.value.code, err.value.field) == (code, "outputs.ranef_path"), err.value.message
    assert list(dirs["outside"].iterdir()) == []
    assert (dirs["out"] / "taken.parquet").read_bytes() == b"not mine"


def test_same_file_twice_and_no_output_root(client: Client, dirs: dict[str, Path]) -> None:
    with pytest.raises(SparsemmError) as err:
        client.fit(FORMULA, S, ranef_path="same.parquet", fitted_path="./same.parquet")
    assert (err.value.code, err.value.field) == (CODE.INVALID_ARGUMENT, "outputs.fitted_path")
    cfg = config(dirs["root"], dirs["state"].with_name("other.duckdb"), None, workers=1)
    with running(cfg) as target, Client(target) as c, pytest.raises(SparsemmError) as err:
        c.fit(FORMULA, S, fitted_path="f.parquet")
    assert (err.value.code, err.value.field) == (CODE.FAILED_PRECONDITION, "outputs.fitted_path")


def test_the_write_itself_follows_no_symlink(tmp_path: Path) -> None:
    """A symlink planted after the request was checked, or a file that appeared since."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    table = solver.fit(FORMULA, str(Path(__file__).parent / "data" / S)).ranef()
    os.symlink(outside, root / "planted")
    with pytest.raises(OutputRefused) as err:
        write_parquet(table, str(root / "planted" / "x.parquet"), str(root), "f")
    assert err.value.code == "PERMISSION_DENIED" and list(outside.iterdir()) == []
    (root / "late.parquet").write_bytes(b"theirs")
    with pytest.raises(OutputRefused) as err:
        write_parquet(table, str(root / "late.parquet"), str(root), "f")
    assert err.value.code == "ALREADY_EXISTS"
    assert (root / "late.parquet").read_bytes() == b"theirs"
    assert sorted(p.name for p in root.iterdir()) == ["late.parquet", "planted"]
    write_parquet(table, str(root / "a" / "b" / "ok.parquet"), str(root), "f")
    assert pq.read_table(root / "a" / "b" / "ok.parquet").equals(table)
