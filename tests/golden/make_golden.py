"""Regenerate the lme4 golden values and the test datasets.

    .venv/bin/python tests/golden/make_golden.py

Runs tests/golden/lme4_golden.R (needs Rscript with lme4, mlmrev and jsonlite:
``apt-get install r-cran-lme4 r-cran-mlmrev r-cran-jsonlite``) into a temporary
directory, then writes

    tests/golden/lme4_golden.json   golden values per case (see the R script)
    tests/golden/R_VERSIONS.txt     R, lme4 and Matrix versions
    tests/data/NAME.parquet         each dataset; R factors as dictionary columns
                                    with exactly R's level order

The test-suite reads only these files; it never needs R.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).parent
DATA = HERE.parent / "data"


def to_parquet(csv: Path, levels_file: Path, out: Path) -> None:
    """One exported dataset to Parquet, factors as Categoricals in R's level order."""
    levels = json.loads(levels_file.read_text()) if levels_file.exists() else {}
    levels = levels or {}
    dtypes = {name: str for name in levels}
    frame = pd.read_csv(csv, dtype=dtypes, keep_default_na=False, na_values=[""])
    for name, lev in levels.items():
        frame[name] = pd.Categorical(frame[name], categories=lev)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    pq.write_table(table, out, compression="zstd")


def main() -> int:
    if shutil.which("Rscript") is None:
        print("make_golden: Rscript not found (apt-get install r-cran-lme4 r-cran-mlmrev)")
        return 1
    DATA.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["Rscript", str(HERE / "lme4_golden.R"), tmp], check=True)
        out = Path(tmp)
        for csv in sorted(out.glob("*.csv")):
            name = csv.stem
            to_parquet(csv, out / f"{name}.levels.json", DATA / f"{name}.parquet")
        shutil.copy(out / "lme4_golden.json", HERE / "lme4_golden.json")
        shutil.copy(out / "R_VERSIONS.txt", HERE / "R_VERSIONS.txt")
    print(f"wrote {HERE / 'lme4_golden.json'} and datasets under {DATA}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
