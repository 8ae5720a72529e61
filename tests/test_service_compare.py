"""Likelihood-ratio comparisons through the service (CompareModels) and ``sparsemm anova``.

Remote tests equal the in-process ``likelihood_ratio`` to 1e-10, by formulas on one
source and by finished jobs (an ML job used as kept, a REML job refitted by ML).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sparsemm import solver
from sparsemm.cli import main
from sparsemm.solver.inference import likelihood_ratio
from sparsemm.solver.results import json_safe
from sparsemm_client import Client, SparsemmError
from tests.service_helpers import CODE, TOKEN, close, config, data_root, running, write_token_file

SMALL = "Reaction ~ Days + (1 | Subject)"
BIG = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return data_root(tmp_path_factory.mktemp("compare"))


@pytest.fixture(scope="module")
def server(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("compare-state")
    tokens = write_token_file(tmp / "tokens")
    with running(config(root, tmp / "state.duckdb", tokens, workers=2)) as target:
        yield target


@pytest.fixture(scope="module")
def local(root: Path) -> dict:
    data = str(root / "sleepstudy.parquet")
    small, big = solver.fit(SMALL, data, reml=False), solver.fit(BIG, data, reml=False)
    return json_safe(likelihood_ratio(small, big).to_dict())


def test_formulas_on_a_source_equal_in_process(client: Client, local: dict) -> None:
    test = client.anova(BIG, SMALL, data="sleepstudy.parquet")  # any order, as lme4
    close(local, test.to_dict())
    assert test.df == 2 and test.small["npar"] == 4 and test.p < 1e-9
    assert test.message.p_value == pytest.approx(local["p"], rel=1e-10)
    assert test.message.big.formula == BIG
    job = client.job(test.job_id)
    assert job.kind == "COMPARE" and job.formula == f"{BIG} vs {SMALL}"
    assert client.result(test.job_id).to_json() == test.to_json()  # type: ignore[union-attr]


def test_finished_jobs_kept_or_refitted_by_ml(client: Client, local: dict) -> None:
    reml_big = client.fit(BIG, "sleepstudy.parquet")  # refitted by ML on the server
    ml_small = client.fit(SMALL, "sleepstudy.parquet", ml=True)  # used as kept
    test = client.anova(ml_small, reml_big.job_id)
    close(local, test.to_dict())
    assert test.data_name == "sleepstudy.parquet"
    watched = client.wait(test.job_id)
    assert watched.to_json() == test.to_json()


def test_cli_anova_in_process_and_remote_print_the_same(
    server: str, root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPARSEMM_TOKEN", TOKEN)
    data = str(root / "sleepstudy.parquet")
    outputs = []
    for extra in ([], ["--server", server]):
        for fmt in ("text", "json"):
            args = ["anova", "--quiet", "--data", data, "--formula", SMALL, "--formula", BIG]
            assert main([*args, "--format", fmt, *extra]) == 0
            outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[2] and "m1    6" in outputs[0] and "***" in outputs[0]
    close(json.loads(outputs[1]), json.loads(outputs[3]))
    with Client(server, token=TOKEN) as c:
        ids = [c.fit(f, "sleepstudy.parquet", ml=True).job_id for f in (SMALL, BIG)]
    assert main(["anova", "--quiet", "--server", server, "--job", ids[0], "--job", ids[1],
                 "--format", "json"]) == 0  # fmt: skip
    close(json.loads(outputs[1]), json.loads(capsys.readouterr().out))


def test_cli_anova_bad_input(capsys: pytest.CaptureFixture[str], root: Path) -> None:
    data = str(root / "sleepstudy.parquet")
    for args in (["--data", data, "--formula", SMALL],
                 ["--job", "a", "--job", "b"],
                 ["--data", data, "--formula", SMALL, "--formula", "Reaction ~ no + (1|Subject)"],
                 ["--data", data, "--formula", SMALL, "--formula", SMALL]):  # fmt: skip
        assert main(["anova", "--quiet", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sparsemm: error: ") and err.count("\n") == 1, err


def test_comparison_errors(client: Client, root: Path) -> None:
    glmm = client.fit("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp.parquet",
                      family="binomial")  # fmt: skip
    table = pq.read_table(root / "sleepstudy.parquet")
    uploaded_reml = client.fit(BIG, table, name="sleep")
    kept = client.fit(SMALL, "sleepstudy.parquet", ml=True)
    fewer_rows = client.fit(SMALL, "sql:SELECT * FROM 'sleepstudy.parquet' WHERE Days > 0", ml=True)
    cases = [
        (lambda: client.anova(kept, glmm), CODE.INVALID_ARGUMENT, "job_ids"),
        (lambda: client.anova(kept, uploaded_reml), CODE.FAILED_PRECONDITION, "job_ids"),
        (lambda: client.anova(kept, "no-such-job"), CODE.NOT_FOUND, "job_id"),
        (lambda: client.anova(kept, fewer_rows), CODE.INVALID_ARGUMENT, "models"),
        (lambda: client.anova(SMALL, SMALL, data="sleepstudy.parquet"), CODE.INVALID_ARGUMENT,
         "models"),
        (lambda: client.anova(SMALL, "Reaction ~ (1 | Subject", data="sleepstudy.parquet"),
         CODE.INVALID_ARGUMENT, "models[1].formula"),
        (lambda: client.anova(SMALL, BIG, data="../x.parquet"), CODE.PERMISSION_DENIED, "source"),
    ]  # fmt: skip
    for call, code, field in cases:
        with pytest.raises(SparsemmError) as err:
            call()
        assert (err.value.code, err.value.field) == (code, field), err.value.message
    with pytest.raises(TypeError):
        client.anova(SMALL, data="sleepstudy.parquet")
    assert "no longer holds" in _message(lambda: client.anova(kept, uploaded_reml))


def _message(call) -> str:  # type: ignore[no-untyped-def]
    try:
        call()
    except SparsemmError as err:
        return err.message
    raise AssertionError("the call succeeded")
