"""Synthetic EHR encounters with crossed patients x physicians nested-ish in hospitals.

One row is one encounter. Sizes scale with the number of rows ``n``:

- patients  ``n // 10``      (about 10 encounters each, drawn at random),
- physicians ``n // 200``    (physician ``j`` works at hospital ``j % n_hospitals``),
- hospitals ``n // 10_000``  (at least 2).

Each patient has a home hospital; an encounter's physician is, with probability
``HOME_SHARE`` (0.85), one of the home hospital's physicians and otherwise any
physician, and the encounter's hospital is the physician's. So patients and
physicians are crossed (the fill-in case of DESIGN.md §2) and hospitals are not
nested in patients.

Columns (IDs are int64 rather than strings: cheaper to write, read and group by):

    patient, physician, hospital   int64   group IDs, 0-based
    age                            float64 patient-level, standardised: (years - 60) / 15,
                                           years ~ N(60, 15) clipped to [18, 100]
    egfr                           float64 encounter-level, standardised eGFR
                                           (about unit variance, correlated -0.4 with age)
    acei                           int8    0/1 ACE-inhibitor use, P(1) = expit(-0.6 + 0.3 age)
    y                              float64 serum potassium (mmol/L), Gaussian
    adverse                        int8    0/1 adverse event, logit model

    y = b0 + b_age age + b_egfr egfr + b_acei acei
        + u_patient + u_physician + u_hospital + u_hospital_acei acei + e
    logit P(adverse) = a0 + a_age age + a_egfr egfr + a_acei acei
        + v_patient + v_physician + v_hospital

with the true values in ``TRUE_PARAMS``. The covariates are stored standardised, so
the model to fit is ``y ~ age + egfr + acei + (1 | patient) + (1 | physician)
+ (1 + acei | hospital)`` and its fixed effects are directly ``TRUE_PARAMS.beta``.

Group-level effects are drawn first (O(groups) memory), then rows in chunks of
``CHUNK_ROWS`` with one seeded generator per chunk, written as one Parquet row group
each. The output is a deterministic function of ``(n_rows, seed)``, and
``generate(n, seed)`` returns exactly the table that ``write(n, path, seed)`` writes.

    python -m benchmarks.ehr_generator --rows 1000000 --out ehr_1m.parquet --seed 1
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROWS_PER_PATIENT = 10
ROWS_PER_PHYSICIAN = 200
ROWS_PER_HOSPITAL = 10_000
HOME_SHARE = 0.85
CHUNK_ROWS = 1_000_000  # part of the definition of the data: changing it changes the rows
FORMULA = "y ~ age + egfr + acei + (1 | patient) + (1 | physician) + (1 + acei | hospital)"
ADVERSE_FORMULA = "adverse ~ age + egfr + acei + (1 | patient) + (1 | physician) + (1 | hospital)"
FACTORS = ("patient", "physician", "hospital")


@dataclass(frozen=True)
class TrueParams:
    """The parameters the data are drawn from (names as lme4 prints them)."""

    beta_names: tuple[str, ...] = ("(Intercept)", "age", "egfr", "acei")
    beta: tuple[float, ...] = (4.2, 0.06, -0.12, 0.15)
    sd_patient: float = 0.25
    sd_physician: float = 0.10
    sd_hospital: float = 0.15
    sd_hospital_acei: float = 0.08
    corr_hospital: float = 0.3  # correlation of the hospital intercept and acei slope
    sigma: float = 0.35  # residual SD
    adverse_beta: tuple[float, ...] = (-2.5, 0.4, -0.3, 0.5)
    adverse_sd_patient: float = 0.8
    adverse_sd_physician: float = 0.3
    adverse_sd_hospital: float = 0.2


TRUE_PARAMS = TrueParams()

SCHEMA = pa.schema(
    [
        ("patient", pa.int64()),
        ("physician", pa.int64()),
        ("hospital", pa.int64()),
        ("age", pa.float64()),
        ("egfr", pa.float64()),
        ("acei", pa.int8()),
        ("y", pa.float64()),
        ("adverse", pa.int8()),
    ]
)


@dataclass(frozen=True)
class Sizes:
    """Numbers of groups for ``n_rows`` rows."""

    n_rows: int
    patients: int
    physicians: int
    hospitals: int

    @classmethod
    def for_rows(cls, n_rows: int) -> Sizes:
        hospitals = max(2, n_rows // ROWS_PER_HOSPITAL)
        physicians = max(hospitals, n_rows // ROWS_PER_PHYSICIAN)
        patients = max(1, n_rows // ROWS_PER_PATIENT)
        return cls(n_rows, patients, physicians, hospitals)


@dataclass(frozen=True)
class GroupEffects:
    """Everything drawn per group; arrays indexed by the group ID."""

    home_hospital: np.ndarray  # per patient
    age: np.ndarray  # per patient, standardised
    u_patient: np.ndarray
    v_patient: np.ndarray
    u_physician: np.ndarray
    v_physician: np.ndarray
    u_hospital: np.ndarray  # (hospitals, 2): intercept, acei slope
    v_hospital: np.ndarray
    physicians_at: np.ndarray  # per hospital: how many physicians j with j % H == h


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))


def _hospital_effects(rng: np.random.Generator, n: int, p: TrueParams) -> np.ndarray:
    s0, s1, r = p.sd_hospital, p.sd_hospital_acei, p.corr_hospital
    cov = np.array([[s0 * s0, r * s0 * s1], [r * s0 * s1, s1 * s1]])
    return rng.multivariate_normal(np.zeros(2), cov, size=n, method="cholesky")


def draw_groups(sizes: Sizes, seed: int, p: TrueParams = TRUE_PARAMS) -> GroupEffects:
    """Draw the group-level effects (stream 0 of ``seed``)."""
    rng = _rng(seed, 0)
    n_pat, n_phy, n_hos = sizes.patients, sizes.physicians, sizes.hospitals
    years = np.clip(rng.normal(60.0, 15.0, n_pat), 18.0, 100.0)
    return GroupEffects(
        home_hospital=rng.integers(0, n_hos, n_pat),
        age=(years - 60.0) / 15.0,
        u_patient=rng.normal(0.0, p.sd_patient, n_pat),
        v_patient=rng.normal(0.0, p.adverse_sd_patient, n_pat),
        u_physician=rng.normal(0.0, p.sd_physician, n_phy),
        v_physician=rng.normal(0.0, p.adverse_sd_physician, n_phy),
        u_hospital=_hospital_effects(rng, n_hos, p),
        v_hospital=rng.normal(0.0, p.adverse_sd_hospital, n_hos),
        physicians_at=(n_phy - np.arange(n_hos) + n_hos - 1) // n_hos,
    )


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _assign(rng: np.random.Generator, m: int, sizes: Sizes, g: GroupEffects):
    """Patient, physician and hospital of ``m`` encounters."""
    patient = rng.integers(0, sizes.patients, m)
    home = g.home_hospital[patient]
    k = (rng.random(m) * g.physicians_at[home]).astype(np.int64)
    own = home + sizes.hospitals * k  # the k-th physician of the home hospital
    anyone = rng.integers(0, sizes.physicians, m)
    physician = np.where(rng.random(m) < HOME_SHARE, own, anyone)
    return patient, physician, physician % sizes.hospitals


def _chunk(index: int, m: int, sizes: Sizes, g: GroupEffects, seed: int, p: TrueParams):
    rng = _rng(seed, 1, index)
    patient, physician, hospital = _assign(rng, m, sizes, g)
    age = g.age[patient]
    egfr = -0.4 * age + np.sqrt(1.0 - 0.16) * rng.standard_normal(m)
    acei = (rng.random(m) < _expit(-0.6 + 0.3 * age)).astype(np.int8)
    b, a, uh = p.beta, p.adverse_beta, g.u_hospital[hospital]
    y = b[0] + b[1] * age + b[2] * egfr + b[3] * acei
    y += g.u_patient[patient] + g.u_physician[physician] + uh[:, 0] + uh[:, 1] * acei
    y += rng.normal(0.0, p.sigma, m)
    eta = a[0] + a[1] * age + a[2] * egfr + a[3] * acei
    eta += g.v_patient[patient] + g.v_physician[physician] + g.v_hospital[hospital]
    adverse = (rng.random(m) < _expit(eta)).astype(np.int8)
    columns = [patient, physician, hospital, age, egfr, acei, y, adverse]
    return pa.Table.from_arrays([pa.array(c) for c in columns], schema=SCHEMA)


def iter_chunks(n_rows: int, seed: int, p: TrueParams = TRUE_PARAMS) -> Iterator[pa.Table]:
    """Yield the rows as tables of at most ``CHUNK_ROWS`` rows."""
    sizes = Sizes.for_rows(n_rows)
    groups = draw_groups(sizes, seed, p)
    for index, start in enumerate(range(0, n_rows, CHUNK_ROWS)):
        yield _chunk(index, min(CHUNK_ROWS, n_rows - start), sizes, groups, seed, p)


def generate(n_rows: int, seed: int = 0, p: TrueParams = TRUE_PARAMS) -> pa.Table:
    """The whole table in memory (for tests and small sizes)."""
    chunks = list(iter_chunks(n_rows, seed, p))
    return pa.concat_tables(chunks) if chunks else SCHEMA.empty_table()


def write(n_rows: int, out: Path, seed: int = 0, p: TrueParams = TRUE_PARAMS) -> Path:
    """Write the table to ``out`` one row group per chunk; atomic via a temporary file."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with pq.ParquetWriter(tmp, SCHEMA, compression="zstd") as writer:
        for table in iter_chunks(n_rows, seed, p):
            writer.write_table(table, row_group_size=CHUNK_ROWS)
    tmp.replace(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    write(args.rows, args.out, args.seed)
    seconds = time.perf_counter() - start
    print(f"wrote {args.rows} rows to {args.out} in {seconds:.1f} s")


if __name__ == "__main__":
    main()
