"""Disclosure control (off by default): small groups' conditional modes and row-level
outputs withheld and said so in the result, oversaturated designs refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparsemm import solver
from sparsemm_client import Client, SparsemmError
from tests.service_helpers import CODE, FORMULA, config, data_root, running

# three subjects keep only 6 of their 10 days: fewer rows than the minimum group size
SMALL = ("sql:SELECT * FROM 'sleepstudy.parquet' "
         "WHERE NOT (Subject IN ('308', '309', '310') AND Days > 5)")  # fmt: skip
RARE = ("sql:SELECT *, CASE WHEN Subject = '308' AND Days = 0 THEN 'rare' ELSE 'common' END "
        "AS grp FROM 'sleepstudy.parquet'")  # fmt: skip


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return data_root(tmp_path_factory.mktemp("disclosure"))


@pytest.fixture(scope="module")
def client(root: Path) -> Iterator[Client]:
    cfg = config(root, root.parent / "s.duckdb", None, workers=1, disclosure_control=True)
    with running(cfg) as target, Client(target) as c:
        yield c


def test_small_groups_and_row_outputs_withheld_and_stated(client: Client, root: Path) -> None:
    m = client.fit(FORMULA, SMALL, ranef=True, fitted=True, residual_quantiles=True)
    d = m.disclosure
    assert d is not None and d["min_group_size"] == 10 and not d["row_outputs_allowed"]
    assert d["ranef_withheld"] == [{"group": "Subject", "levels": 3, "of": 18}]
    assert d["withheld"] == [
        "conditional modes of 3 of 18 levels of Subject (fewer than 10 rows)",
        "fitted values and residuals", "the quantiles of the scaled residuals",
    ]  # fmt: skip
    assert m.message.disclosure.ranef_withheld[0].levels == 3 and m.residual_quantiles == []
    ranef = m.ranef()
    assert ranef.num_rows == 15 * 2 and not {"308", "309", "310"} & set(ranef["level"].to_pylist())
    with pytest.raises(SparsemmError) as err:
        m.fitted()
    assert err.value.code == CODE.PERMISSION_DENIED and "disclosure" in err.value.message
    summary = m.summary()
    assert "Scaled residuals" not in summary
    assert "Disclosure control: withheld conditional modes of 3 of 18 levels" in summary
    local = solver.fit(FORMULA, solver.prepare(FORMULA, _sql(root, SMALL)).source)
    assert m.fixef == pytest.approx({f.term: f.estimate for f in local.result.fixed_effects})


def _sql(root: Path, source: str) -> str:
    return source.replace("'sleepstudy.parquet'", f"'{root / 'sleepstudy.parquet'}'")


@pytest.mark.parametrize(
    ("formula", "source", "family", "field", "words"),
    [
        ("Reaction ~ Days + (1 | Subject)", "sql:SELECT * FROM 'sleepstudy.parquet' WHERE Days < 2",
         "gaussian", "model.formula", "oversaturated (2 fixed effects + 18 random-effect columns "
         "for 36 rows"),
        ("Reaction ~ grp + (1 | Subject)", RARE, "gaussian", "grprare",
         "'grprare' rests on 1 of 180 rows"),
        ("cbind(incidence, size - incidence) ~ g + (1 | herd)",
         "sql:SELECT *, CASE WHEN herd = '1' AND period = '1' THEN 'a' ELSE 'b' END AS g "
         "FROM 'cbpp.parquet'", "binomial", "gb", "'gb' rests on 1 of 56 rows"),
    ],
)  # fmt: skip
def test_oversaturated_designs_refused(
    client: Client, formula: str, source: str, family: str, field: str, words: str
) -> None:
    with pytest.raises(SparsemmError) as err:
        client.fit(formula, source, family=family)
    assert (err.value.code, err.value.field) == (CODE.FAILED_PRECONDITION, field)
    assert words in err.value.message, err.value.message


def test_comparisons_are_checked_too(client: Client) -> None:
    few = "sql:SELECT * FROM 'sleepstudy.parquet' WHERE Days < 2"
    with pytest.raises(SparsemmError) as err:
        client.anova("Reaction ~ 1 + (1 | Subject)", "Reaction ~ Days + (1 | Subject)", data=few)
    assert (err.value.code, err.value.field) == (CODE.FAILED_PRECONDITION, "models[0].formula")
    test = client.anova("Reaction ~ 1 + (1 | Subject)", FORMULA, data="sleepstudy.parquet")
    assert test.df == 3


def test_jobs_from_before_the_policy_and_allowed_row_outputs(tmp_path: Path, root: Path) -> None:
    state = tmp_path / "s.duckdb"
    with running(config(root, state, None, workers=1)) as target, Client(target) as c:
        before = c.fit(FORMULA, "sleepstudy.parquet", fitted=True)
        assert before.disclosure is None and before.residual_quantiles
    cfg = config(root, state, None, workers=1, disclosure_control=True, allow_row_outputs=True,
                 min_group_size=5)  # fmt: skip
    with running(cfg) as target, Client(target) as c:
        for table in (c.ranef, c.fitted):  # kept without the policy's filter
            with pytest.raises(SparsemmError) as err:
                table(before.job_id)
            assert err.value.code == CODE.PERMISSION_DENIED
        now = c.fit(FORMULA, SMALL, fitted=True)
        assert now.fitted().num_rows == 168 and now.residual_quantiles
        assert now.disclosure == {
            "min_group_size": 5, "max_saturation": 0.5, "row_outputs_allowed": True,
            "ranef_withheld": [], "withheld": [], "notes": [],
        }  # fmt: skip
        assert now.ranef().num_rows == 36


def test_row_level_predictions_withheld_and_stated(client: Client) -> None:
    job = client.fit(FORMULA, "sleepstudy.parquet", ranef=False).job_id
    table = client.predict(job, "sleepstudy.parquet")
    account = json.loads(table.schema.metadata[b"sparsemm.prediction"])
    assert table.num_rows == 0 and account["withheld"] and account["rows"] == 0
    assert account["disclosure"]["withheld"] == ["predictions per row"]
