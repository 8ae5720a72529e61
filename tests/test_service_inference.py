"""Inference on finished fits through the service (issue 6 item 7, issue 4): Predict and
PredictUpload, Satterthwaite and ICC options of a fit, confidence intervals.

Numbers through the service equal the in-process ones (to 1e-12); unknown jobs, GLMM
jobs and a bad re_form get clear statuses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sparsemm import solver
from sparsemm.cli import main
from sparsemm.server.task import FitRef, FitTask, PredictTask, SourceRef, task_from_json
from sparsemm.solver.confint import confint
from sparsemm.solver.results import json_safe
from sparsemm_client import Client, SparsemmError
from tests.service_helpers import CODE, DATA, FORMULA, TOKEN, config, data_root, running

NEWDATA = "sql:SELECT * FROM 'sleepstudy.parquet' WHERE Days IN (0, 9)"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("inference")
    out = base / "out"
    out.mkdir()
    return {"root": data_root(base), "out": out, "state": base / "state.duckdb"}


@pytest.fixture(scope="module")
def server(dirs: dict[str, Path]) -> Iterator[str]:
    cfg = config(dirs["root"], dirs["state"], None, workers=2, output_root=str(dirs["out"]))
    with running(cfg) as target:
        yield target


@pytest.fixture(scope="module")
def fit_job(client: Client) -> str:
    return str(client.fit(FORMULA, "sleepstudy.parquet", ranef=False).job_id)


@pytest.fixture(scope="module")
def local_fit() -> solver.LMMFit:
    return solver.fit(FORMULA, str(DATA / "sleepstudy.parquet"))


def _newdata() -> pa.Table:
    """New rows: two known subjects, a new one, and a row with a missing Days."""
    return pa.table({"Days": [0.0, 9.0, 3.0, None], "Subject": ["308", "372", "new", "309"]})


def _equal(a: pa.Table, b: pa.Table) -> None:
    assert a.column_names == b.column_names and a.num_rows == b.num_rows
    for name in a.column_names:
        x, y = a[name].to_pylist(), b[name].to_pylist()
        assert [v is None for v in x] == [v is None for v in y], name
        xs, ys = ([v for v in z if v is not None] for z in (x, y))
        np.testing.assert_allclose(xs, ys, rtol=1e-12, atol=1e-12)


# ---- Predict -------------------------------------------------------------------------


def test_predict_on_a_source_equals_in_process(
    client: Client, fit_job: str, local_fit: solver.LMMFit, dirs: dict[str, Path]
) -> None:
    remote = client.predict(fit_job, NEWDATA, se_fit=True)
    local_source = NEWDATA.replace("'sleepstudy.parquet'", f"'{dirs['root']}/sleepstudy.parquet'")
    local = local_fit.predict(local_source, se_fit=True)
    assert remote.num_rows == 36
    _equal(remote.replace_schema_metadata(None), local)
    account = json.loads(remote.schema.metadata[b"sparsemm.prediction"])
    assert account["fit_job_id"] == fit_job and account["fit_method"] == "REML"
    assert (account["rows"], account["null_rows"], account["withheld"]) == (36, 0, False)
    job = client.jobs()[0]
    assert job.kind == "PREDICT" and job.fit_job_id == fit_job and job.formula == FORMULA


def test_predict_upload_re_form_and_new_levels(
    client: Client, fit_job: str, local_fit: solver.LMMFit
) -> None:
    for re_form in (None, "NA", "~(1 | Subject)"):
        remote = client.predict(fit_job, _newdata(), re_form=re_form)
        local = local_fit.predict(_newdata(), re_form=re_form)
        _equal(remote.replace_schema_metadata(None), local)
        assert remote["fit"].null_count == 1
    with pytest.raises(SparsemmError) as err:
        client.predict(fit_job, _newdata(), allow_new_levels=False)
    assert err.value.code == CODE.INVALID_ARGUMENT and "new" in err.value.message


def test_predict_written_on_the_server(
    client: Client, fit_job: str, local_fit: solver.LMMFit, dirs: dict[str, Path]
) -> None:
    table = client.predict(fit_job, _newdata(), out_path="pred/p.parquet")
    account = json.loads(table.schema.metadata[b"sparsemm.prediction"])
    assert table.num_rows == 0 and account["written"] == str(dirs["out"] / "pred" / "p.parquet")
    _equal(pq.read_table(account["written"]), local_fit.predict(_newdata()))


def test_predict_errors(client: Client, fit_job: str) -> None:
    glmm = client.fit("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                      "cbpp.parquet", family="binomial", ranef=False).job_id  # fmt: skip
    upload = client.fit(FORMULA, pq.read_table(DATA / "sleepstudy.parquet"), ranef=False).job_id
    cases = [
        ((fit_job, NEWDATA), {"re_form": "~(1 | Nope)"}, CODE.INVALID_ARGUMENT, "re_form", "Nope"),
        (("0" * 32, NEWDATA), {}, CODE.NOT_FOUND, "job_id", "no job"),
        (("", NEWDATA), {}, CODE.INVALID_ARGUMENT, "job_id", "job_id"),
        ((glmm, NEWDATA), {}, CODE.FAILED_PRECONDITION, "job_id", "generalized"),
        ((upload, NEWDATA), {}, CODE.FAILED_PRECONDITION, "job_id", "uploaded"),
        ((fit_job, "../x.parquet"), {}, CODE.PERMISSION_DENIED, "source", ""),
        ((fit_job, "sql:SELECT 1 AS z"), {}, CODE.INVALID_ARGUMENT, "Days", "no column"),
        ((fit_job, NEWDATA), {"out_path": "../p.parquet"}, CODE.PERMISSION_DENIED, "out_path", ""),
    ]  # fmt: skip
    for args, kw, code, field, words in cases:
        with pytest.raises(SparsemmError) as err:
            client.predict(*args, **kw)
        assert (err.value.code, err.value.field) == (code, field), (args, kw, err.value)
        assert words in err.value.message, err.value.message


def test_cli_predict_remote_equals_in_process(
    server: str, fit_job: str, dirs: dict[str, Path], tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("SPARSEMM_TOKEN", TOKEN)
    new = tmp_path / "new.parquet"
    pq.write_table(_newdata(), new)
    pq.write_table(_newdata(), dirs["root"] / "new.parquet")  # the same rows on the server
    common = ["predict", "--re-form", "~(1 | Subject)", "--se-fit"]
    assert main([*common, "--data", str(DATA / "sleepstudy.parquet"), "--formula", FORMULA,
                 "--newdata", str(new), "--out", str(tmp_path / "a.parquet")]) == 0  # fmt: skip
    local_line = capsys.readouterr().out
    assert main([*common, "--server", server, "--job", fit_job, "--newdata", "new.parquet",
                 "--out", str(tmp_path / "b.parquet")]) == 0  # fmt: skip
    remote_line = capsys.readouterr().out
    assert remote_line.replace("b.parquet", "a.parquet") == local_line
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))
    assert main(["predict", "--server", server, "--job", "f" * 32, "--newdata", "new.parquet",
                 "--out", str(tmp_path / "c.parquet")]) == 2  # fmt: skip
    assert "no job" in capsys.readouterr().err


def test_predict_task_survives_the_store() -> None:
    fit = FitTask("f1", SourceRef("sql", "SELECT 1", roots=("/r",)), FORMULA, ordering="amd")
    base = FitRef("f1", fit, (0.9, 0.1, 0.2), 180)
    task = PredictTask("p1", base, SourceRef("path", "/r/new.parquet"), "NA", False, True, "/o")
    assert task_from_json(task.to_json()) == task


# ---- Satterthwaite and ICC on a fit -----------------------------------------------------


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_cli_fit_satterthwaite_icc_remote_prints_what_in_process_does(
    server: str, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("SPARSEMM_TOKEN", TOKEN)
    fit = ["fit", "--quiet", "--formula", FORMULA, "--satterthwaite", "--icc"]
    local = ["--data", str(DATA / "sleepstudy.parquet")]
    remote = ["--data", "sleepstudy.parquet", "--server", server]
    for fmt in ("json", "text"):
        code_l, out_l = _cli(capsys, *fit, *local, "--format", fmt)
        code_r, out_r = _cli(capsys, *fit, *remote, "--format", fmt)
        assert code_l == code_r == 0
        if fmt == "text":
            assert out_r == out_l.replace(local[1], remote[1])
            assert "Pr(>|t|)" in out_r and "Adjusted ICC" in out_r
            continue
        a, b = (json.loads(o) for o in (out_l, out_r))
        assert a.pop("timings").keys() == b.pop("timings").keys()
        assert a == b  # every number equal


def test_fit_result_message_carries_df_p_and_icc(client: Client) -> None:
    m = client.fit(FORMULA, "sleepstudy.parquet", satterthwaite=True, icc=True, ranef=False)
    d = m.to_dict()
    for msg, fe in zip(m.message.fixed_effects, d["fixed_effects"]):
        assert (msg.df, msg.p_value) == (fe["df"], fe["p_value"]) and fe["df"] == pytest.approx(17)
    icc = m.message.icc
    assert (icc.adjusted, icc.conditional, icc.var_residual) == (
        d["icc"]["adjusted"], d["icc"]["conditional"], d["icc"]["var_residual"])  # fmt: skip
    plain = client.fit(FORMULA, "sleepstudy.parquet", ranef=False)
    assert not plain.message.HasField("icc") and not plain.message.fixed_effects[0].HasField("df")
    with pytest.raises(SparsemmError) as err:
        client.fit("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp.parquet",
                   family="binomial", satterthwaite=True)  # fmt: skip
    assert (err.value.code, err.value.field) == (CODE.INVALID_ARGUMENT, "outputs.satterthwaite")


# ---- confidence intervals ---------------------------------------------------------------


def test_confint_equals_in_process(client: Client, fit_job: str, local_fit: solver.LMMFit) -> None:
    for method, parm in (("profile", None), ("wald", ["beta_"])):
        remote = client.confint(fit_job, method=method, level=0.9, parm=parm)
        local = json_safe(confint(local_fit, method, 0.9, parm))
        d = remote.to_dict()
        d.pop("timings")
        assert d == local  # every number equal
        assert remote.message.fit_job_id == fit_job and remote.fit_job_id == fit_job
    names = [r["parameter"] for r in client.confint(fit_job, "wald").rows]
    assert names == [".sig01", ".sig02", ".sig03", ".sigma", "(Intercept)", "Days"]
    assert not client.confint(fit_job, "wald").message.intervals[0].HasField("lower")


def test_confint_errors(client: Client, fit_job: str) -> None:
    glmm = client.fit("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                      "cbpp.parquet", family="binomial", ranef=False).job_id  # fmt: skip
    cases = [
        ("0" * 32, {}, CODE.NOT_FOUND, "job_id"),
        (glmm, {}, CODE.FAILED_PRECONDITION, "job_id"),
        (fit_job, {"level": 1.5}, CODE.INVALID_ARGUMENT, "level"),
        (fit_job, {"parm": ["nope"]}, CODE.INVALID_ARGUMENT, "parameters"),
    ]
    for job_id, kw, code, field in cases:
        with pytest.raises(SparsemmError) as err:
            client.confint(job_id, **kw)
        assert (err.value.code, err.value.field) == (code, field), (job_id, kw, err.value)


def test_cli_confint_remote_prints_what_in_process_does(
    server: str, fit_job: str, capsys, monkeypatch
) -> None:
    monkeypatch.setenv("SPARSEMM_TOKEN", TOKEN)
    local = ["--data", str(DATA / "sleepstudy.parquet"), "--formula", FORMULA]
    for extra in (["--method", "wald", "--level", "0.9"], ["--parm", ".sigma"]):
        code_l, out_l = _cli(capsys, "confint", *local, *extra)
        code_r, out_r = _cli(capsys, "confint", "--server", server, "--job", fit_job, *extra)
        assert code_l == code_r == 0 and out_l == out_r and "%" in out_r
    code = main(["confint", "--server", server, "--job", "f" * 32])
    assert code == 2 and "no job" in capsys.readouterr().err
