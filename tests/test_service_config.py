"""``sparsemm serve --config PATH``: a TOML file with a key for every flag, flags win."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from sparsemm.cli import _parser, main
from sparsemm.cli_service import server_config
from sparsemm.server import ServerConfig
from sparsemm.server.settings import SETTINGS


def _config(*argv: str) -> ServerConfig:
    return server_config(_parser().parse_args(["serve", *argv]))


def _serve_parser() -> argparse.ArgumentParser:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["serve"]


def test_every_flag_has_a_key() -> None:
    flags = {o.lstrip("-") for a in _serve_parser()._actions for o in a.option_strings}
    negated = {f"no-{s.key}" for s in SETTINGS if s.kind is bool}  # --no-disclosure-control
    assert flags - {"help", "h", "config"} - negated == {s.key for s in SETTINGS}


def test_file_then_flags(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    conf = tmp_path / "etc" / "sparsemm.toml"
    conf.parent.mkdir()
    conf.write_text(
        '# the server\nlisten = "127.0.0.1:6000"\ndata-root = ["../data", "/srv/b"]\n'
        'state = "state.duckdb"\nworkers = 4\nmax-queue = 9\ngrace = 2\nmax-upload-mb = 3\n'
        'output-root = "/srv/out"\ntoken-file = "tokens"\ndisclosure-control = true\n'
        "memory-budget-mb = 512\nmin-group-size = 11\n"
    )
    cfg = _config("--config", str(conf))
    assert cfg.listen == "127.0.0.1:6000" and cfg.workers == 4 and cfg.max_queue == 9
    assert cfg.data_roots == (str(conf.parent / "../data"), "/srv/b")  # relative to the file
    assert cfg.state == str(conf.parent / "state.duckdb") and cfg.grace_s == 2.0
    assert cfg.max_upload_bytes == 3 << 20 and cfg.output_root == "/srv/out"
    assert cfg.token_file == str(conf.parent / "tokens") and cfg.max_rpcs == 64  # a default
    cfg = _config("--config", str(conf), "--workers", "1", "--data-root", "x", "--grace", "0.5")
    assert cfg.workers == 1 and cfg.data_roots == ("x",) and cfg.grace_s == 0.5
    assert cfg.max_queue == 9  # still the file's
    assert cfg.memory_budget_bytes == 512 << 20 and cfg.disclosure() is not None
    assert cfg.disclosure().min_group_size == 11  # type: ignore[union-attr]
    assert _config("--config", str(conf), "--no-disclosure-control").disclosure() is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ('data_root = ["/data"]\n', "unknown key 'data_root' (did you mean 'data-root'?)"),
        ('data-root = ["/d"]\n[tls]\ncert = "x"\n', "unknown key 'tls'"),
        ('data-root = ["/d"]\nworkers = "4"\n', "'workers' must be an integer, not str"),
        ('data-root = "/d"\n', "'data-root' must be a list of strings, not str"),
        ('data-root = ["/d"]\ngrace = true\n', "'grace' must be a number, not bool"),
        ("data-root = [\n", "not valid TOML"),
        ("workers = 2\n", "no data root"),
    ],
)
def test_bad_files_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, named: str
) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    assert main(["serve", "--config", str(conf)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sparsemm: error: ") and err.count("\n") == 1 and named in err, err
    assert main(["serve", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "No such file" in capsys.readouterr().err
