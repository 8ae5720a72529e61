"""The benchmark harness's own logic: what it records of a sparsemm fit (one small fit
through the CLI in a child process) and how the Markdown reads it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from benchmarks import backends, ehr_generator, problems, run


def test_sparsemm_records_fixed_effects_and_evaluations(tmp_path: Path) -> None:
    problem = problems.ehr("ehr_tiny", 3_000, tmp_path)
    ehr_generator.write(3_000, problem.data, seed=problems.EHR_SEED)
    extra = backends.run_sparsemm(problem).extra
    fixed = extra["fixed_effects"]
    assert list(fixed) == ["(Intercept)", "age", "egfr", "acei"]
    assert all(se > 0 for _, se in fixed.values())
    assert extra["evaluations"] > extra["optimizer_evaluations"] > 5  # + the checks'
    assert 0 < extra["evaluation_s"] < extra["fit_s"]
    assert extra["first_evaluation_s"] > 0
    assert extra["ranef_rows"] is None


def test_sparsemm_times_the_conditional_modes_when_asked(tmp_path: Path) -> None:
    problem = problems.ehr("ehr_tiny", 3_000, tmp_path)
    ehr_generator.write(3_000, problem.data, seed=problems.EHR_SEED)
    extra = backends.run_sparsemm(replace(problem, ranef=True)).extra
    assert extra["ranef_rows"] == 300 + 15 + 2 * 2  # patients, physicians, hospitals x 2
    assert 0 < extra["outputs_s"] < extra["fit_s"]


def _row(extra: dict) -> run.Row:
    row = {"problem": "ehr_10m", "backend": "sparsemm", "status": "ok", "seconds": 500.0}
    return row | {"peak_rss_mb": 7000.0, "objective": 9.3e6, "extra": json.dumps(extra)}


TRUTH = dict(problems.ehr("x", 10).true_beta)  # 4.2, 0.06, -0.12, 0.15


def test_fixed_effects_within_two_standard_errors_of_the_generating_values() -> None:
    near = {t: [v + 0.001, 0.001] for t, v in TRUTH.items()}  # 1.0 SE each
    assert run.recovery({"true_beta": TRUTH, "fixed_effects": near}) == (
        "4/4 within 2 SE (largest 1.0)"
    )
    near["acei"] = [0.15 - 0.0025, 0.001]  # 2.5 SE below
    assert run.recovery({"true_beta": TRUTH, "fixed_effects": near}) == (
        "3/4 within 2 SE (acei 2.5)"
    )
    assert run.recovery({"fixed_effects": near}) == ""  # no generating values (InstEval)


def test_markdown_row_shows_evaluations_and_recovery() -> None:
    fixed = {t: [v, 0.01] for t, v in TRUTH.items()}
    extra = {"read_s": 30.0, "fit_s": 470.0, "evaluations": 41, "evaluation_s": 10.25,
             "first_evaluation_s": 60.5, "true_beta": TRUTH, "fixed_effects": fixed}  # fmt: skip
    header, rule, line = run.markdown([_row(extra)]).splitlines()
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert len(cells) == len(header.strip("|").split("|")) == rule.count("|") - 1
    assert cells[5:8] == ["41", "10.25", "60.50"]
    assert cells[-2] == "4/4 within 2 SE (largest 0.0)"


def test_ehr_30m_is_known_but_not_run_by_default() -> None:
    problem = problems.all_problems()["ehr_30m"]
    assert problem.ehr_rows == 30_000_000 and "ehr_30m" not in problems.DEFAULT_PROBLEMS
