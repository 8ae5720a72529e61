"""``sparsemm confint`` and ``sparsemm plot``: output, files, and exit 2 on bad input."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from sparsemm.cli import main

HERE = Path(__file__).parent
SLEEP = str(HERE / "data" / "sleepstudy.parquet")
DYE = str(HERE / "data" / "Dyestuff.parquet")
FORMULA = "Reaction ~ Days + (Days | Subject)"
DYE_FORMULA = "Yield ~ 1 + (1 | Batch)"
GOLDEN = {c["name"]: c for c in json.loads((HERE / "golden" / "profile_golden.json").read_text())}


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_confint_profile_json(capsys) -> None:
    code, out, _ = run(capsys, "confint", "--data", DYE, "--formula", DYE_FORMULA,
                       "--format", "json")  # fmt: skip
    assert code == 0
    res = json.loads(out)
    assert res["method"] == "profile" and res["fit_method"] == "REML" and res["level"] == 0.95
    expected = GOLDEN["dyestuff"]["intervals"]
    assert [row["parameter"] for row in res["intervals"]] == list(expected)
    for row in res["intervals"]:
        for side in ("lower", "upper"):
            assert abs(row[side] - expected[row["parameter"]][side]) < 1e-3 * abs(row[side])
    assert set(res["timings"]) == {"fit_s", "confint_s"}


def test_confint_wald_text_and_parm(capsys) -> None:
    code, out, _ = run(capsys, "confint", "--data", SLEEP, "--formula", FORMULA,
                       "--method", "wald", "--level", "0.9")  # fmt: skip
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["5", "%", "95", "%"]
    assert lines[1].split() == [".sig01", "NA", "NA"]
    assert lines[-1].split()[0] == "Days"
    code, out, _ = run(capsys, "confint", "--data", DYE, "--formula", DYE_FORMULA,
                       "--parm", ".sigma", "--format", "json")  # fmt: skip
    rows = json.loads(out)["intervals"]
    assert code == 0 and [row["parameter"] for row in rows] == [".sigma"]


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


@pytest.mark.parametrize(
    ("kind", "extra"),
    [("caterpillar", ["--top", "5"]), ("trace", []), ("profile", ["--parm", ".sigma"])],
)
def test_plot_writes_an_image(capsys, tmp_path: Path, kind: str, extra: list[str]) -> None:
    path = tmp_path / f"{kind}.png"
    code, out, err = run(capsys, "plot", kind, "--data", SLEEP, "--formula", FORMULA,
                         "--out", str(path), *extra)  # fmt: skip
    assert code == 0, err
    assert out.strip() == str(path)
    assert png_size(path) == (1200, 800)


def test_plot_svg(capsys, tmp_path: Path) -> None:
    path = tmp_path / "trace.svg"
    code, _, _ = run(capsys, "plot", "trace", "--data", DYE, "--formula", DYE_FORMULA, "--ml",
                     "--out", str(path))  # fmt: skip
    assert code == 0 and path.read_text().lstrip().startswith("<?xml")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["confint", "--level", "1.5"], "--level 1.5: must be between 0 and 1"),
        (["confint", "--parm", "nope"], "no parameter 'nope'"),
        (["confint", "--method", "wald", "--parm", "nope"], "parm nope: no such parameter"),
        (["plot", "trace", "--out", "x.jpg"], "must end in .png or .svg"),
        (["plot", "caterpillar", "--out", "x.png", "--top", "0"], "--top 0: must be at least 1"),
        (["plot", "trace", "--out", "/no/such/dir/x.png"], "No such file or directory"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, args: list[str], fragment: str) -> None:
    code, out, err = run(capsys, *args, "--data", DYE, "--formula", DYE_FORMULA)
    assert code == 2, err
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("sparsemm: error: ")
    assert fragment in err


def test_bad_data_and_formula_exit_2(capsys) -> None:
    code, _, err = run(capsys, "confint", "--data", "/no/such.parquet", "--formula", FORMULA)
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "plot", "profile", "--data", SLEEP, "--formula",
                       "Reaction ~ nosuch + (1 | Subject)", "--out", "x.png")  # fmt: skip
    assert code == 2 and "unknown column 'nosuch'" in err
