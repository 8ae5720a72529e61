"""End-to-end tests of the gRPC service: a real server on a loopback port.

The server runs in this process (its fits in spawned worker processes) with a token
file, a temporary data root holding a copy of sleepstudy and a slow synthetic table,
and a temporary DuckDB state.  The thin client (``sparsemm_client``) and the CLI's
``--server`` path talk to it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import grpc
import numpy as np
import pyarrow.parquet as pq
import pytest

from sparsemm import solver
from sparsemm.cli import main
from sparsemm.server import ConfigError, ServerConfig, SparseMMServer
from sparsemm.server.store import JobStore
from sparsemm.v1 import sparsemm_pb2 as pb
from sparsemm.v1 import sparsemm_pb2_grpc as pb_grpc
from sparsemm_client import Client, SparsemmError
from tests.service_helpers import (
    BOB_TOKEN,
    CODE,
    DATA,
    FORMULA,
    SLOW_FORMULA,
    TOKEN,
    close,
    config,
    contract,
    finite,
    free_port,
    slow_table,
    wait_for,
    write_token_file,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data root: sleepstudy, a slow table, and (under trap/) ways out of the root."""
    base = tmp_path_factory.mktemp("service")
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    shutil.copy(DATA / "sleepstudy.parquet", root / "sleepstudy.parquet")
    shutil.copy(DATA / "cbpp.parquet", root / "cbpp.parquet")
    pq.write_table(slow_table(), root / "slow.parquet")
    (root / "notes.txt").write_text("not data\n")
    shutil.copy(DATA / "sleepstudy.parquet", outside / "secret.parquet")
    con = duckdb.connect(str(outside / "secret.duckdb"))
    con.execute("CREATE TABLE t AS SELECT 1.0 AS y")
    con.close()
    con = duckdb.connect(str(root / "inside.duckdb"))  # a view that reads outside the root
    con.execute(f"CREATE VIEW leak AS SELECT * FROM read_parquet('{outside}/secret.parquet')")
    con.close()
    (root / "trap").mkdir()
    os.symlink(outside / "secret.parquet", root / "trap" / "escape.parquet")
    os.symlink(outside, root / "trap" / "linkdir")
    return root


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_token_file(tmp_path_factory.mktemp("tokens") / "tokens")


@pytest.fixture(scope="module")
def server(root: Path, token_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    state = tmp_path_factory.mktemp("state") / "state.duckdb"
    srv = SparseMMServer(config(root, state, token_file, workers=2))
    port = srv.start()
    yield f"127.0.0.1:{port}"
    srv.stop(grace=1.0)


# ------------------------------------------------------------------ results


def test_remote_fit_equals_in_process(client: Client, root: Path) -> None:
    local = solver.fit(FORMULA, str(root / "sleepstudy.parquet"))
    events: list[Any] = []
    remote = client.fit(FORMULA, "sleepstudy.parquet", progress=events.append)
    close(contract(finite(local.result.to_dict())), contract(remote.to_dict()))
    assert remote.fixef == pytest.approx(
        {fe.term: fe.estimate for fe in local.result.fixed_effects}, rel=1e-10
    )
    assert {e.kind for e in events} == {"rows", "memory", "iteration"}
    assert list(remote.message.theta) == pytest.approx(local.result.theta, rel=1e-10)
    assert remote.message.reml_criterion == pytest.approx(local.result.reml_criterion, rel=1e-10)
    assert remote.varcorr[-1]["group"] == "Residual"
    here, there = local.ranef(), remote.ranef()
    assert there.column_names == ["group", "level", "term", "condval", "condsd"]
    assert there.column("level").to_pylist() == here.column("level").to_pylist()
    np.testing.assert_allclose(there.column("condsd"), here.column("condsd"), rtol=1e-10)


@pytest.mark.parametrize(
    ("dataset", "model"),
    [
        ("sleepstudy", ["--formula", FORMULA]),
        ("sleepstudy", ["--formula", FORMULA, "--ml"]),
        ("cbpp", ["--formula", "cbind(incidence, size - incidence) ~ period + (1 | herd)",
                  "--family", "binomial"]),
    ],
)  # fmt: skip
def test_cli_prints_the_same_in_process_and_remote(
    server: str, root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    dataset: str, model: list[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("SPARSEMM_TOKEN", TOKEN)
    data = str(root / f"{dataset}.parquet")  # an absolute path under the root: same Data line
    outputs: dict[str, list[str]] = {}
    for where, extra in (("local", []), ("remote", ["--server", server])):
        for fmt in ("text", "json"):
            code = main(["fit", "--quiet", "--data", data, *model, "--format", fmt, *extra])
            assert code == 0
            outputs.setdefault(where, []).append(capsys.readouterr().out)
    assert outputs["local"][0] == outputs["remote"][0]  # the text summary, to the character
    local_json, remote_json = (json.loads(outputs[w][1]) for w in ("local", "remote"))
    close(contract(local_json), contract(remote_json))
    assert set(remote_json["timings"]) == set(local_json["timings"])
    assert {"read_s", "fit_s", "total_s"} <= set(remote_json["timings"])


def test_cli_remote_outputs_and_bad_input(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("SPARSEMM_TOKEN", TOKEN)
    ranef, fitted = tmp_path / "re.parquet", tmp_path / "fit.parquet"
    code = main(["fit", "--quiet", "--server", server, "--data", "sleepstudy.parquet",
                 "--formula", FORMULA, "--ranef", str(ranef), "--fitted", str(fitted)])  # fmt: skip
    assert code == 0 and "Scaled residuals" in capsys.readouterr().out
    assert pq.read_table(ranef).num_rows == 36 and pq.read_table(fitted).num_rows == 180
    code = main(["fit", "--quiet", "--server", server, "--data", "sleepstudy.parquet",
                 "--formula", "Reaction ~ nosuch + (1 | Subject)"])  # fmt: skip
    out = capsys.readouterr()
    assert code == 2 and out.out == "" and out.err.count("\n") == 1
    assert "nosuch" in out.err and out.err.startswith("sparsemm: error: ")


def test_upload_equals_server_side(client: Client, server: str, root: Path) -> None:
    table = pq.read_table(root / "sleepstudy.parquet")
    server_side = client.fit(FORMULA, "sleepstudy.parquet")
    with Client(server, token=TOKEN, chunk_bytes=1024) as small_chunks:  # many messages
        uploaded = small_chunks.fit(FORMULA, table, name="sleepstudy")
        assert uploaded.ranef().equals(server_side.ranef())
    from_pandas = client.fit(FORMULA, table.to_pandas(), ml=True)
    relation = duckdb.sql(f"SELECT * FROM read_parquet('{root / 'sleepstudy.parquet'}')")
    close(contract(client.fit(FORMULA, relation).to_dict()), contract(uploaded.to_dict()))
    close(contract(server_side.to_dict()), contract(uploaded.to_dict()))
    assert from_pandas.to_dict()["method"] == "ML"
    assert client.job(uploaded.job_id).source == "upload:sleepstudy"


# ------------------------------------------------------------------ security


def test_unauthenticated_and_wrong_token_refused(server: str) -> None:
    for token in (None, "wrong", TOKEN + "x"):
        with Client(server, token=token) as c:
            for call in (lambda: c.jobs(), lambda: c.fit(FORMULA, "sleepstudy.parquet")):
                with pytest.raises(SparsemmError) as err:
                    call()
                assert err.value.code == CODE.UNAUTHENTICATED
                assert TOKEN not in err.value.message
            assert c.health() == "SERVING"  # health checks need no token
    with Client(server, token=BOB_TOKEN) as bob:  # a token kept only as its sha256
        assert bob.jobs() == []  # bob does not see alice's jobs


def test_health_and_reflection(server: str) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(server))
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    md = (("authorization", f"Bearer {TOKEN}"),)
    (response,) = stub.ServerReflectionInfo(iter([request]), metadata=md)
    names = {s.name for s in response.list_services_response.service}
    assert {"sparsemm.v1.SparseMMService", "grpc.health.v1.Health"} <= names
    with Client(server) as anonymous:
        assert anonymous.health("sparsemm.v1.SparseMMService") == "SERVING"
        with pytest.raises(SparsemmError) as err:
            anonymous.health("no.such.Service")
        assert err.value.code == CODE.NOT_FOUND


def test_paths_outside_the_data_roots_refused(client: Client, root: Path) -> None:
    outside = root.parent / "outside"
    sources = [
        "/etc/passwd", str(outside / "secret.parquet"), "../outside/secret.parquet",
        "trap/escape.parquet", "trap/linkdir/secret.parquet", "trap/*.parquet", "trap",
        f"duckdb:{outside}/secret.duckdb:t", "duckdb:inside.duckdb:leak",
        f"sql:SELECT * FROM read_parquet('{outside}/secret.parquet')",
        "sql:SELECT * FROM read_csv('/etc/passwd')",
        f"sql:SELECT * FROM read_parquet('{root}/trap/escape.parquet')",
    ]  # fmt: skip
    for source in sources:
        with pytest.raises(SparsemmError) as err:
            client.fit("y ~ 1 + (1 | Subject)", source)
        assert err.value.code in (CODE.PERMISSION_DENIED, CODE.INVALID_ARGUMENT), source
        assert err.value.field == "source", source
        assert "root:" not in err.value.message  # no file contents echoed
    sql = f"sql:SELECT * FROM read_parquet('{root}/sleepstudy.parquet')"
    assert client.fit(FORMULA, sql).nobs == 180  # SQL over files under the root is fine


def test_loopback_only_without_tokens(root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loopback"):
        SparseMMServer(ServerConfig(listen="0.0.0.0:0", data_roots=(str(root),),
                                    state=str(tmp_path / "s.duckdb")))  # fmt: skip


def _certificates(d: Path) -> dict[str, Path]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
        "-days", "1", "-subj", "/CN=sparsemm-test-ca")  # fmt: skip
    (d / "san").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name in ("server", "client"):
        run("req", *ec, "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"),
            "-subj", f"/CN={name}-test")  # fmt: skip
        run("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"),
            "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "1",
            "-out", str(d / f"{name}.pem"), "-extfile", str(d / "san"))  # fmt: skip
    return {p.stem + p.suffix: p for p in d.iterdir()}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_mutual_tls_requires_a_client_certificate(root: Path, tmp_path: Path) -> None:
    c = _certificates(tmp_path)
    cfg = config(root, tmp_path / "s.duckdb", None, workers=1, tls_cert=str(c["server.pem"]),
                  tls_key=str(c["server.key"]), tls_client_ca=str(c["ca.pem"]))  # fmt: skip
    srv = SparseMMServer(cfg)
    target = f"localhost:{srv.start()}"
    try:
        with Client(target, tls_ca=str(c["ca.pem"]), tls_cert=str(c["client.pem"]),
                    tls_key=str(c["client.key"])) as ok:  # fmt: skip
            assert ok.health() == "SERVING" and ok.jobs() == []
        with Client(target, tls_ca=str(c["ca.pem"])) as no_cert, pytest.raises(SparsemmError):
            no_cert.jobs()
        with Client(target) as plaintext, pytest.raises(SparsemmError):
            plaintext.jobs()
    finally:
        srv.stop(grace=0.5)


# ------------------------------------------------------------------ malformed requests


def _raw(server: str) -> tuple[pb_grpc.SparseMMServiceStub, tuple[tuple[str, str], ...]]:
    channel = grpc.insecure_channel(server)
    return pb_grpc.SparseMMServiceStub(channel), (("authorization", f"Bearer {TOKEN}"),)


def _rpc_error(call: Callable[[], Any]) -> SparsemmError:
    try:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    except SparsemmError as err:
        return err
    except grpc.RpcError as err:
        return SparsemmError.from_rpc(err)
    raise AssertionError("the call succeeded")


def _malformed(client: Client, server: str) -> list[tuple[str, Callable[[], Any], CODE, str]]:
    stub, md = _raw(server)
    fit = client.fit
    failed = client.submit("Reaction ~ nosuch + (1 | Subject)", "sleepstudy.parquet").job_id
    plain = client.submit(FORMULA, "sleepstudy.parquet", ranef=False).job_id
    for job_id in (failed, plain):
        while not client.job(job_id).done:
            time.sleep(0.02)

    def fit_raw(**model: Any) -> Any:
        spec = pb.ModelSpec(formula=model.pop("formula", FORMULA), **model)
        return stub.Fit(pb.FitRequest(source="sleepstudy.parquet", model=spec), metadata=md)

    def upload(*messages: pb.FitUploadRequest) -> Any:
        return stub.FitUpload(iter(messages), metadata=md)

    header = pb.FitUploadRequest(header=pb.UploadHeader(model=pb.ModelSpec(formula=FORMULA)))
    S = "sleepstudy.parquet"
    inv, nf, fp = CODE.INVALID_ARGUMENT, CODE.NOT_FOUND, CODE.FAILED_PRECONDITION
    fml = "model.formula"
    cases = [
        ("unclosed formula", lambda: fit("Reaction ~ Days + (Days | Subject", S), inv, fml),
        ("not a formula", lambda: fit("Reaction ~~ +* (", S), inv, "model.formula"),
        ("no response", lambda: fit("~ Days + (1 | Subject)", S), inv, "model.formula"),
        ("unknown column", lambda: fit("Reaction ~ nosuch + (1 | Subject)", S), inv, "nosuch"),
        ("non-numeric response", lambda: fit("Subject ~ Days + (1 | Subject)", S), inv, "Subject"),
        ("missing file", lambda: fit(FORMULA, "nosuch.parquet"), nf, "source"),
        ("missing glob", lambda: fit(FORMULA, "nosuch/*.parquet"), nf, "source"),
        ("unknown format", lambda: fit(FORMULA, "notes.txt"), inv, "source"),
        ("empty source", lambda: fit(FORMULA, ""), inv, "source"),
        ("sql not a select", lambda: fit(FORMULA, "sql:DELETE FROM t"), inv, "source"),
        ("two sql statements", lambda: fit(FORMULA, "sql:SELECT 1; SELECT 2"), inv, "source"),
        ("bad duckdb source", lambda: fit(FORMULA, "duckdb:nothing"), inv, "source"),
        ("unknown family value", lambda: fit_raw(family=99), inv, "model.family"),
        ("binomial of a continuous response", lambda: fit(FORMULA, S, family="binomial"), inv,
         "Reaction"),
        ("poisson of a continuous response", lambda: fit(FORMULA, S, family="poisson"), inv,
         "Reaction"),
        ("gaussian with a logit link", lambda: fit_raw(link=pb.LINK_LOGIT), inv, "model.link"),
        ("binomial with identity link", lambda: fit(FORMULA, S, family="binomial",
                                                    link="identity"), inv, "model.link"),
        ("REML for a GLMM", lambda: fit_raw(family=pb.FAMILY_POISSON, method=pb.METHOD_REML),
         inv, "model.method"),
        ("unknown ordering", lambda: fit_raw(ordering=42), inv, "model.ordering"),
        ("empty formula", lambda: fit_raw(formula=" "), inv, "model.formula"),
        ("huge formula", lambda: fit_raw(formula="y ~ " + "x + " * 5000 + "(1|g)"), inv,
         "model.formula"),
        ("unknown weights", lambda: fit(FORMULA, S, weights="nosuch"), inv, "nosuch"),
        ("upload without header", lambda: upload(pb.FitUploadRequest(arrow_ipc_chunk=b"x")),
         inv, "header"),
        ("upload of garbage", lambda: upload(header, pb.FitUploadRequest(arrow_ipc_chunk=b"junk")),
         inv, "arrow_ipc_chunk"),
        ("upload with two headers", lambda: upload(header, header), inv, "header"),
        ("empty upload", lambda: upload(header), inv, "arrow_ipc_chunk"),
        ("unknown job", lambda: client.job("no-such-job"), nf, "job_id"),
        ("empty job id", lambda: client.job(""), inv, "job_id"),
        ("cancel unknown job", lambda: client.cancel("no-such-job"), nf, "job_id"),
        ("watch unknown job", lambda: client.wait("no-such-job"), nf, "job_id"),
        ("ranef of a failed job", lambda: client.ranef(failed), fp, "job_id"),
        ("ranef not kept", lambda: client.ranef(plain), fp, "outputs.ranef"),
        ("fitted not kept", lambda: client.fitted(plain), fp, "outputs.fitted"),
        ("bad page token", lambda: stub.ListJobs(pb.ListJobsRequest(page_token="x"), metadata=md),
         inv, "page_token"),
        ("bad page size", lambda: stub.ListJobs(pb.ListJobsRequest(page_size=-1), metadata=md),
         inv, "page_size"),
    ]  # fmt: skip
    # and more of the commonest kinds, to make a hundred
    for i in range(100 - len(cases)):
        if i % 3 == 0:
            cases.append((f"column {i}", lambda i=i: fit(f"Reaction ~ c{i} + (1 | Subject)", S),
                          inv, f"c{i}"))  # fmt: skip
        elif i % 3 == 1:
            cases.append((f"missing {i}", lambda i=i: fit(FORMULA, f"no{i}.parquet"), nf, "source"))
        else:
            cases.append((f"outside {i}", lambda i=i: fit(FORMULA, f"/tmp/{i}.parquet"),
                          CODE.PERMISSION_DENIED, "source"))  # fmt: skip
    return cases


def test_a_hundred_malformed_requests_each_get_a_precise_error(client: Client, server: str) -> None:
    cases = _malformed(client, server)
    assert len(cases) == 100
    for name, call, code, field in cases:
        err = _rpc_error(call)
        assert err.code == code, (name, err.code, err.message)
        assert err.field == field, (name, err.field, err.message)
        assert "Traceback" not in err.message and err.message, name
    assert client.health() == "SERVING"
    assert client.fit(FORMULA, "sleepstudy.parquet").nobs == 180


# ------------------------------------------------------------------ jobs


def test_jobs_api(client: Client) -> None:
    job = client.submit(FORMULA, "sleepstudy.parquet", fitted=True)
    assert job.state in ("QUEUED", "RUNNING")
    result = client.wait(job.job_id)
    assert client.job(job.job_id).state == "SUCCEEDED"
    assert client.result(job.job_id).to_json() == result.to_json()
    assert client.fitted(job.job_id).num_rows == 180
    assert job.job_id in [j.job_id for j in client.jobs(state="SUCCEEDED")]
    assert "REML criterion at convergence" in result.summary()


def test_cancel_stops_a_long_fit_within_a_second(client: Client) -> None:
    job = client.submit(SLOW_FORMULA, "slow.parquet")
    wait_for(lambda: client.job(job.job_id).state == "RUNNING")
    time.sleep(0.5)  # into the optimizer
    started = time.monotonic()
    cancelled = client.cancel(job.job_id)
    assert time.monotonic() - started < 1.0
    assert cancelled.state == "CANCELLED" and cancelled.error is not None
    assert "cancelled by" in cancelled.error.message
    assert client.fit(FORMULA, "sleepstudy.parquet").nobs == 180  # a fresh worker took over


def test_deadline_cancels_the_fit(client: Client) -> None:
    with pytest.raises(SparsemmError) as err:
        client.fit(SLOW_FORMULA, "slow.parquet", timeout=1.0)
    assert err.value.code == CODE.DEADLINE_EXCEEDED
    deadline = time.monotonic()
    wait_for(lambda: client.jobs()[0].state == "CANCELLED", timeout=1.0)
    assert time.monotonic() - deadline < 1.0
    assert "deadline" in (client.jobs()[0].error.message or "")  # type: ignore[union-attr]


def test_jobs_survive_a_restart(root: Path, token_file: Path, tmp_path: Path) -> None:
    cfg = config(root, tmp_path / "state.duckdb", token_file, workers=1)
    srv = SparseMMServer(cfg)
    port = srv.start()
    with Client(f"127.0.0.1:{port}", token=TOKEN) as c:
        done = c.fit(FORMULA, "sleepstudy.parquet")
        running = c.submit(SLOW_FORMULA, "slow.parquet")
        wait_for(lambda: c.job(running.job_id).state == "RUNNING")
        queued = c.submit(FORMULA, "sleepstudy.parquet", ml=True)
    srv.stop(grace=0.2)

    srv = SparseMMServer(cfg)
    port = srv.start()
    try:
        with Client(f"127.0.0.1:{port}", token=TOKEN) as c:
            assert c.result(done.job_id).to_json() == done.to_json()
            assert c.ranef(done.job_id).num_rows == 36
            interrupted = c.job(running.job_id)
            assert interrupted.state == "FAILED" and interrupted.error is not None
            assert "interrupted" in interrupted.error.message
            assert c.wait(queued.job_id, timeout=10).to_dict()["method"] == "ML"  # ran again
    finally:
        srv.stop(grace=0.5)


def test_a_job_left_running_by_a_crash_is_failed_on_restart(tmp_path: Path) -> None:
    from sparsemm.server.store import RUNNING, JobRecord
    from sparsemm.server.task import FitTask, SourceRef

    store = JobStore(str(tmp_path / "state.duckdb"))
    task = FitTask("j1", SourceRef("path", "/x.parquet"), FORMULA)
    store.insert(JobRecord("j1", "token:alice", RUNNING, "x.parquet", task, time.time()))
    store.close()  # as a killed server leaves it
    store = JobStore(str(tmp_path / "state.duckdb"))
    assert store.recover() == []
    rec = store.get("j1")
    assert rec is not None and rec.state == "FAILED" and rec.error_code == "ABORTED"
    store.close()


def test_a_full_queue_refuses_with_resource_exhausted(tmp_path: Path) -> None:
    from sparsemm.server.errors import ServiceError
    from sparsemm.server.jobs import JobManager
    from sparsemm.server.task import FitTask, SourceRef

    store = JobStore(str(tmp_path / "state.duckdb"))
    jobs = JobManager(store, workers=1, max_queue=2)  # not started: nothing leaves the queue
    for i in range(2):
        jobs.submit("local", "x", FitTask(f"j{i}", SourceRef("path", "/x"), FORMULA))
    with pytest.raises(ServiceError) as err:
        jobs.submit("local", "x", FitTask("j2", SourceRef("path", "/x"), FORMULA))
    assert err.value.code == CODE.RESOURCE_EXHAUSTED
    assert jobs.cancel("j0", "local", "test") is not None
    assert store.get("j0").state == "CANCELLED"  # type: ignore[union-attr]
    store.close()


# ------------------------------------------------------------------ the command


def test_sparsemm_serve_command(
    root: Path, token_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    port = free_port()
    conf = tmp_path / "sparsemm.toml"  # relative paths in it: to its directory
    conf.write_text(f'data-root = ["{os.path.relpath(root, tmp_path)}"]\nstate = "state.duckdb"\n'
                    f'token-file = "{token_file}"\nworkers = 3\ngrace = 2\n')  # fmt: skip
    cmd = [sys.executable, "-m", "sparsemm", "serve", "--config", str(conf),
           "--listen", f"127.0.0.1:{port}", "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert "serving on" in proc.stdout.readline()
        monkeypatch.setenv("SPARSEMM_TOKEN", TOKEN)
        code = main(["fit", "--quiet", "--server", f"127.0.0.1:{port}", "--data",
                     "sleepstudy.parquet", "--formula", FORMULA, "--format", "json"])  # fmt: skip
        assert code == 0 and json.loads(capsys.readouterr().out)["nobs"] == 180
        assert (tmp_path / "state.duckdb").exists()
        with Client(f"127.0.0.1:{port}", token=TOKEN) as c:  # SIGTERM gives it the grace: 2 s
            slow = c.submit(SLOW_FORMULA, "slow.parquet")
            wait_for(lambda: c.job(slow.job_id).state == "RUNNING", timeout=20)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert 2.0 <= time.monotonic() - started < 8.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    bad = ["serve", "--listen", "0.0.0.0:1", "--data-root", str(root),
           "--state", str(tmp_path / "other.duckdb")]  # fmt: skip
    assert main(bad) == 2 and "loopback" in capsys.readouterr().err
