"""The service's commands: ``sparsemm serve`` and ``sparsemm anova``.

    sparsemm serve [--config PATH.toml] [--listen HOST:PORT] [--data-root DIR ...] ...

Every ``serve`` flag is also a key of the TOML config file (``server.settings``);
flags override the file.

    sparsemm anova --data SOURCE --formula F0 --formula F1 [--weights COL] [--format json]
    sparsemm anova --server HOST:PORT --data SOURCE --formula F0 --formula F1
    sparsemm anova --server HOST:PORT --job ID0 --job ID1

lme4's ``anova(m0, m1)``: both models fitted by ML to the same rows, a likelihood-ratio
test (``solver.inference.likelihood_ratio``); the same text or JSON in-process and
remote.  Exit status 0, 2 on bad input (one line on stderr), 1 when the server cannot
be reached or fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from sparsemm import solver
from sparsemm.cli import BadInput, _Progress, _token, remote_error
from sparsemm.solver.results import json_safe
from sparsemm_client.anova import format_anova

if TYPE_CHECKING:
    from sparsemm.server import ServerConfig

ORDERINGS = ["auto", "schur", "metis", "amd", "nesdis", "best", "natural"]


def register(sub: Any) -> None:
    """Add the service's subcommands to ``sparsemm``'s parser (``args.handler`` runs one)."""
    _serve_parser(sub).set_defaults(handler=serve)
    _anova_parser(sub).set_defaults(handler=anova)


def _serve_parser(sub: Any) -> argparse.ArgumentParser:
    from sparsemm.server.settings import SETTINGS, default

    s = sub.add_parser("serve", help="run the gRPC service")
    s.add_argument("--config", default=None, metavar="PATH", help="TOML file of these settings")
    for setting in SETTINGS:  # default None: not given (the file's value or the default)
        flag, shown = f"--{setting.key}", setting.help
        if default(setting) is not None:
            shown += f" (default {default(setting)})"
        if setting.kind is list:
            s.add_argument(flag, action="append", default=None, metavar="DIR", help=shown)
        elif setting.kind is bool:
            s.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=shown)
        else:
            s.add_argument(flag, type=setting.kind, default=None, help=shown)
    return s


def serve(args: argparse.Namespace) -> int:
    from sparsemm.server import ConfigError, serve

    try:
        return serve(server_config(args))
    except ConfigError as exc:
        print(f"sparsemm: error: {exc}", file=sys.stderr)
        return 2


def server_config(args: argparse.Namespace) -> ServerConfig:
    """The settings of ``--config`` overridden by the flags given."""
    from sparsemm.server import settings

    values = settings.read_file(args.config) if args.config else {}
    for setting in settings.SETTINGS:
        given = getattr(args, setting.key.replace("-", "_"))
        if given is not None:
            values[setting.key] = given
    return settings.server_config(values)


def _anova_parser(sub: Any) -> argparse.ArgumentParser:
    a = sub.add_parser("anova", help="likelihood-ratio test of two nested LMMs (lme4's anova)")
    a.add_argument("--data", default=None, help="source of both models (as for fit)")
    a.add_argument("--formula", action="append", default=[], help="a model (give two)")
    a.add_argument("--job", action="append", default=[], help="a finished job (with --server)")
    a.add_argument("--weights", default=None, help="column of prior weights")
    a.add_argument("--ordering", default="auto", choices=ORDERINGS)
    a.add_argument("--format", default="text", choices=["text", "json"])
    a.add_argument("--server", default=None, help="HOST:PORT of a sparsemm server")
    a.add_argument("--token-file", default=None, help="the server's bearer token")
    a.add_argument("--tls-ca", default=None, help="CA certificate (PEM) of a TLS server")
    a.add_argument("--quiet", action="store_true", help="no progress bars")
    return a


def anova(args: argparse.Namespace) -> int:
    try:
        _check_anova(args)
        return _anova_remote(args) if args.server else _anova_local(args)
    except (solver.InputError, BadInput) as exc:
        print(f"sparsemm: error: {exc}", file=sys.stderr)
        return 2


def _check_anova(args: argparse.Namespace) -> None:
    if args.job:
        if not args.server or len(args.job) != 2 or args.formula or args.data:
            raise BadInput("--job: give two finished jobs of a --server, and no --data/--formula")
    elif len(args.formula) != 2 or not args.data:
        raise BadInput("give --data and two --formula (or, with --server, two --job)")


def _anova_local(args: argparse.Namespace) -> int:
    from sparsemm.solver.inference import likelihood_ratio

    fits = []
    with _Progress(not args.quiet and sys.stderr.isatty()) as prog:
        for formula in args.formula:
            data = solver.prepare(formula, args.data, weights=args.weights, progress=prog.rows)
            model = solver.LinearMixedModel(data, reml=False, ordering=args.ordering)
            fits.append(model.fit(progress=prog.iteration))
    test = json_safe(likelihood_ratio(fits[0], fits[1]).to_dict())
    _print(json.dumps(test), test, args.format, args.data)
    return 0


def _anova_remote(args: argparse.Namespace) -> int:
    from sparsemm_client import Client, SparsemmError

    try:
        with Client(args.server, token=_token(args), tls_ca=args.tls_ca) as client:
            with _Progress(not args.quiet and sys.stderr.isatty()) as prog:
                if args.job:
                    test = client.anova(*args.job, progress=prog.event)
                else:
                    test = client.anova(*args.formula, data=args.data, weights=args.weights,
                                        ordering=args.ordering, progress=prog.event)  # fmt: skip
    except SparsemmError as exc:
        return remote_error(exc, args.server)
    _print(test.to_json(), test.to_dict(), args.format, test.data_name)
    return 0


def _print(as_json: str, test: dict[str, Any], fmt: str, data_name: str) -> None:
    if fmt == "json":
        print(as_json)
    else:
        sys.stdout.write(format_anova(test, data_name))
