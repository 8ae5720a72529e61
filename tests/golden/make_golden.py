"""Regenerate the lme4 golden values and the test datasets from R.

    .venv/bin/python tests/golden/make_golden.py [lme4_golden] [glmer_golden] [inference_golden]
                                                 [predict_golden]
                                                 [profile_golden]

Needs ``Rscript`` with the R packages lme4, mlmRev and jsonlite, and for predict_golden
lmerTest, performance and numDeriv (Debian/Ubuntu: ``apt-get install r-cran-lme4
r-cran-mlmrev r-cran-jsonlite r-cran-lmertest r-cran-performance r-cran-numderiv``).
It runs each golden set's R script (all of them unless some are named) into a temporary
directory and, once every script has succeeded, writes

    tests/golden/lme4_golden.json   lmer's results per case (lme4_golden.R)
    tests/golden/glmer_golden.json  glmer's results per case (glmer_golden.R)
    tests/golden/inference_golden.json  anova() and Wald intervals (inference_golden.R)
    tests/golden/predict_golden.json    predict(newdata), performance::icc and lmerTest's
                                        Satterthwaite df (predict_golden.R)
    tests/golden/profile_golden.json    profile confidence intervals (profile_golden.R)
    tests/golden/R_VERSIONS.txt     R, lme4, Matrix, mlmRev and jsonlite versions
    tests/data/NAME.parquet         each dataset the cases use (zstd-compressed)

See each R script for the fields of its JSON; every double is at full precision.
Two sets may not export a dataset of the same name.

In the Parquet files every R factor is a pandas Categorical, i.e. a dictionary column,
whose dictionary is exactly R's ``levels(x)`` in R's order (unused levels included;
ordered factors stay ordered); R doubles are float64 and R integers int64.  Each file
is read back and checked against the R export before this script reports success.

The test-suite reads only these files; it never needs R.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "data"
# Each golden set is an R script NAME.R that writes NAME.json (and its datasets).
GOLDEN_SETS = (
    "lme4_golden", "glmer_golden", "inference_golden", "predict_golden", "profile_golden"
)  # fmt: skip
INSTALL_HINT = (
    "apt-get install r-cran-lme4 r-cran-mlmrev r-cran-jsonlite r-cran-lmertest "
    "r-cran-performance r-cran-numderiv"
)


def read_export(out: Path, name: str) -> tuple[pd.DataFrame, dict, dict]:
    """The raw CSV (all strings, "" = NA) and its column types and factor levels."""
    types = json.loads((out / f"{name}.types.json").read_text())
    levels = json.loads((out / f"{name}.levels.json").read_text()) or {}
    raw = pd.read_csv(out / f"{name}.csv", dtype=str, keep_default_na=False, na_filter=False)
    if list(raw.columns) != list(types):
        raise ValueError(f"{name}: CSV columns {list(raw.columns)} != {list(types)}")
    return raw, types, levels


def convert_column(values: pd.Series, rtype: str, levels: list[str] | None) -> pd.Series:
    """One CSV column (strings) to the pandas dtype matching R's column type."""
    missing = values == ""
    if rtype in ("factor", "ordered"):
        assert levels is not None and "" not in levels, "factor levels missing or empty"
        cat = pd.Categorical(
            values.where(~missing, None), categories=levels, ordered=rtype == "ordered"
        )
        unknown = int(pd.isna(cat).sum()) - int(missing.sum())
        if unknown:
            raise ValueError(f"{unknown} values not among the R levels")
        return pd.Series(cat, index=values.index)
    if rtype == "double":
        # float() parses correctly rounded; R wrote "%.17g", so this is exact.
        return pd.Series(
            [math.nan if m else float(v) for v, m in zip(values, missing)],
            index=values.index,
            dtype="float64",
        )
    if rtype == "integer":
        ints = [None if m else int(v) for v, m in zip(values, missing)]
        return pd.Series(ints, index=values.index, dtype="Int64" if missing.any() else "int64")
    if rtype == "logical":
        bools = [None if m else {"TRUE": True, "FALSE": False}[v] for v, m in zip(values, missing)]
        return pd.Series(bools, index=values.index, dtype="boolean" if missing.any() else "bool")
    if rtype == "character":
        return values.where(~missing, None)
    raise ValueError(f"unsupported R column type {rtype!r}")


def to_frame(raw: pd.DataFrame, types: dict, levels: dict) -> pd.DataFrame:
    return pd.DataFrame(
        {col: convert_column(raw[col], rtype, levels.get(col)) for col, rtype in types.items()}
    )


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, path, compression="zstd")


def check_parquet(path: Path, frame: pd.DataFrame, types: dict, levels: dict) -> None:
    """Read the file back with pyarrow: same rows, values, and R's level order."""
    table = pq.read_table(path)
    if table.num_rows != len(frame) or table.column_names != list(types):
        raise AssertionError(f"{path.name}: shape or column names changed")
    for col, rtype in types.items():
        column = table.column(col)
        if rtype in ("factor", "ordered"):
            if not pa.types.is_dictionary(column.type):
                raise AssertionError(f"{path.name}:{col} is not a dictionary column")
            if column.type.ordered != (rtype == "ordered"):
                raise AssertionError(f"{path.name}:{col} ordered flag changed")
            for chunk in column.chunks:
                if chunk.dictionary.to_pylist() != levels[col]:
                    raise AssertionError(f"{path.name}:{col} level order differs from R")
        if column.to_pylist() != pa.Array.from_pandas(frame[col]).to_pylist():
            raise AssertionError(f"{path.name}:{col} values changed in the round trip")


def run_r(script: Path, out: Path) -> None:
    if shutil.which("Rscript") is None:
        raise SystemExit(f"make_golden: Rscript not found; needs R with lme4 ({INSTALL_HINT})")
    subprocess.run(["Rscript", str(script), str(out)], check=True)


def datasets_of(golden: list[dict]) -> list[str]:
    """Datasets a set exports (a case naming ``uses_dataset`` reuses another set's)."""
    return sorted({case["dataset"] for case in golden if "dataset" in case})


def check_distinct_datasets(goldens: dict[str, list[dict]]) -> None:
    """Each tests/data file comes from exactly one golden set."""
    seen: dict[str, str] = {}
    for name, golden in goldens.items():
        for dataset in datasets_of(golden):
            if dataset in seen:
                raise ValueError(f"dataset {dataset!r} exported by both {seen[dataset]} and {name}")
            seen[dataset] = name


def write_dataset(out: Path, name: str) -> None:
    """One R export to tests/data/NAME.parquet, read back and checked."""
    raw, types, levels = read_export(out, name)
    frame = to_frame(raw, types, levels)
    path = DATA / f"{name}.parquet"
    write_parquet(frame, path)
    check_parquet(path, frame, types, levels)
    size = path.stat().st_size
    print(f"{path.relative_to(HERE.parent.parent)}: {frame.shape[0]} rows, {size} bytes")


def copy_versions(outs: list[Path]) -> None:
    """R_VERSIONS.txt, which every script writes; the runs must agree."""
    texts = {(out / "R_VERSIONS.txt").read_text() for out in outs}
    if len(texts) != 1:
        raise ValueError(f"the R scripts report different versions: {sorted(texts)}")
    shutil.copyfile(outs[0] / "R_VERSIONS.txt", HERE / "R_VERSIONS.txt")


def parse_args(argv: list[str] | None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "sets", nargs="*", metavar="SET", help=f"default: all of {', '.join(GOLDEN_SETS)}"
    )
    sets = parser.parse_args(argv).sets
    unknown = sorted(set(sets) - set(GOLDEN_SETS))
    if unknown:
        parser.error(f"unknown golden set(s) {unknown}; choose from {list(GOLDEN_SETS)}")
    return [name for name in GOLDEN_SETS if not sets or name in sets]


def main(argv: list[str] | None = None) -> int:
    sets = parse_args(argv)
    DATA.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lme4_golden_") as tmp:
        outs = {name: Path(tmp) / name for name in sets}
        for name, out in outs.items():
            run_r(HERE / f"{name}.R", out)
        goldens = {
            name: json.loads((out / f"{name}.json").read_text()) for name, out in outs.items()
        }
        check_distinct_datasets(goldens)
        for name, out in outs.items():
            for dataset in datasets_of(goldens[name]):
                write_dataset(out, dataset)
            shutil.copyfile(out / f"{name}.json", HERE / f"{name}.json")
        copy_versions(list(outs.values()))
    for name, golden in goldens.items():
        print(f"{len(golden)} cases -> {HERE / f'{name}.json'}")
    print((HERE / "R_VERSIONS.txt").read_text().strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
