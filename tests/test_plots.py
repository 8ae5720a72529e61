"""Plots render to PNG and SVG files of the size asked for (sparsemm/plots.py)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from sparsemm import plots, solver
from sparsemm.solver.profile import profile_intervals

DATA = Path(__file__).parent / "data"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the PNG signature and IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def svg_size(path: Path) -> tuple[float, float]:
    """(width, height) in points from the root element."""
    text = path.read_text()[:2000]
    found = re.search(r'<svg[^>]*width="([\d.]+)pt" height="([\d.]+)pt"', text)
    assert found, text[:300]
    return float(found.group(1)), float(found.group(2))


@pytest.fixture(scope="module")
def sleep_fit() -> solver.LMMFit:
    return solver.fit("Reaction ~ Days + (Days | Subject)", str(DATA / "sleepstudy.parquet"))


def many_levels(n: int = 80) -> pa.Table:
    rng = np.random.default_rng(1)
    return pa.table({
        "group": ["g"] * n, "level": [f"l{i}" for i in range(n)], "term": ["(Intercept)"] * n,
        "condval": rng.normal(size=n), "condsd": np.full(n, 0.2),
    })  # fmt: skip


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_caterpillar(tmp_path: Path, sleep_fit: solver.LMMFit, suffix: str) -> None:
    out = plots.caterpillar(sleep_fit.ranef(), tmp_path / f"cat{suffix}", size=(900, 600))
    assert out.stat().st_size > 1000
    if suffix == ".png":
        assert png_size(out) == (900, 600)
    else:  # 100 dpi pixels are 72/100 points
        assert svg_size(out) == (648.0, 432.0)


def test_caterpillar_keeps_the_top_and_bottom_levels(tmp_path: Path) -> None:
    values = many_levels().column("condval").to_numpy()
    shown, cut = plots._shown(values, 25)
    order = np.argsort(values)
    assert cut and list(shown) == list(order[:25]) + list(order[-25:])
    assert not plots._shown(values[:50], 25)[1]
    out = plots.caterpillar(many_levels(), tmp_path / "cat.png")
    assert png_size(out) == plots.DEFAULT_SIZE


def test_profile_traces(tmp_path: Path) -> None:
    fit = solver.fit("Yield ~ 1 + (1 | Batch)", str(DATA / "Dyestuff.parquet"))
    prof = profile_intervals(fit, which=[".sig01", ".sigma"])
    out = plots.profile_traces(prof, tmp_path / "profile.png", size=(800, 500))
    assert png_size(out) == (800, 500) and out.stat().st_size > 1000


def test_optimizer_trace(tmp_path: Path) -> None:
    trace: list[float] = []
    solver.fit("Reaction ~ Days + (Days | Subject)", str(DATA / "sleepstudy.parquet"),
               progress=lambda k, value: trace.append(value))  # fmt: skip
    assert len(trace) >= 4
    out = plots.optimizer_trace(trace, tmp_path / "trace.png")
    assert png_size(out) == plots.DEFAULT_SIZE and out.stat().st_size > 1000


def test_bad_output_names_and_sizes(tmp_path: Path) -> None:
    with pytest.raises(solver.InputError, match=r"\.png or \.svg"):
        plots.optimizer_trace([1.0, 0.5], tmp_path / "trace.jpg")
    with pytest.raises(solver.InputError, match="too small"):
        plots.optimizer_trace([1.0, 0.5], tmp_path / "trace.png", size=(10, 10))
    with pytest.raises(solver.InputError, match="--top 0"):
        plots.caterpillar(many_levels(), tmp_path / "cat.png", top=0)
