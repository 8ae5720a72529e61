"""The server's settings: one table gives each its flag, its config-file key and its
``ServerConfig`` field (``sparsemm serve``, ``--config PATH``).

The config file is TOML (Python's ``tomllib``), flat, one key per flag, spelled as the
flag without its dashes (``data-root``, ``memory-budget-mb``)::

    listen = "0.0.0.0:50051"
    data-root = ["/data/ehr", "/data/registry"]
    token-file = "/run/secrets/sparsemm-tokens"   # relative paths: to the file's directory
    workers = 4

Flags override the file, the file overrides the defaults; a list flag given on the
command line replaces the file's list.  An unknown key, or a value of the wrong type,
is a ``ConfigError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .app import ConfigError, ServerConfig


@dataclass(frozen=True)
class Setting:
    key: str  # the flag without "--", and the config file's key
    field: str  # of ServerConfig
    kind: type  # str, int, float, bool or list (of str)
    help: str
    scale: int = 1  # value * scale is the field (MB -> bytes)
    path: bool = False  # a file or directory: relative to the config file's directory
    default: Any = None  # None: ServerConfig's


SETTINGS: tuple[Setting, ...] = (
    Setting("listen", "listen", str, "HOST:PORT to listen on", default="127.0.0.1:50051"),
    Setting("data-root", "data_roots", list, "a directory remote fits may read (repeatable)",
            path=True),
    Setting("state", "state", str, "DuckDB file keeping jobs and results across restarts",
            path=True, default="sparsemm-state.duckdb"),
    Setting("token-file", "token_file", str, "bearer tokens, one 'NAME TOKEN' a line", path=True),
    Setting("tls-cert", "tls_cert", str, "server certificate (PEM)", path=True),
    Setting("tls-key", "tls_key", str, "server private key (PEM)", path=True),
    Setting("tls-client-ca", "tls_client_ca", str,
            "require client certificates signed by this CA (mutual TLS)", path=True),
    Setting("workers", "workers", int, "fits running at once (worker processes)"),
    Setting("max-queue", "max_queue", int, "jobs waiting before refusal"),
    Setting("max-rpcs", "max_rpcs", int, "concurrent calls before refusal"),
    Setting("grace", "grace_s", float, "seconds running jobs get to finish on shutdown"),
    Setting("max-upload-mb", "max_upload_bytes", int, "largest upload accepted", scale=1 << 20),
    Setting("max-message-mb", "max_message_bytes", int, "largest gRPC message", scale=1 << 20),
    Setting("output-root", "output_root", str,
            "a writable directory clients may have tables written to", path=True),
    Setting("memory-budget-mb", "memory_budget_bytes", int,
            "admit fits while their estimated memory fits in this (default: no limit)",
            scale=1 << 20),
    Setting("disclosure-control", "disclosure_control", bool,
            "withhold small groups' modes and row-level outputs, refuse oversaturated designs"),
    Setting("min-group-size", "min_group_size", int,
            "disclosure control: fewest rows behind a level's modes or a 0/1 fixed effect"),
    Setting("allow-row-outputs", "allow_row_outputs", bool,
            "disclosure control: give fitted values and residuals all the same"),
    Setting("max-saturation", "max_saturation", float,
            "disclosure control: most parameters (fixed + random-effect columns) per row"),
)  # fmt: skip
BY_KEY = {s.key: s for s in SETTINGS}


def default(setting: Setting) -> Any:
    """The value a setting has when neither the file nor a flag gives it (None: none)."""
    if setting.default is not None:
        return setting.default
    field = next(f for f in dataclasses.fields(ServerConfig) if f.name == setting.field)
    value = field.default if field.default is not dataclasses.MISSING else None
    return value // setting.scale if isinstance(value, int) and setting.scale != 1 else value


def read_file(path: str) -> dict[str, Any]:
    """The settings a TOML config file gives, by key, checked; relative paths made
    relative to the file's directory."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML: {exc}") from None
    base = os.path.dirname(os.path.abspath(path))
    return {key: _checked(path, key, value, base) for key, value in raw.items()}


def _checked(path: str, key: str, value: Any, base: str) -> Any:
    setting = BY_KEY.get(key)
    if setting is None:
        close = difflib.get_close_matches(key, BY_KEY, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ConfigError(f"--config {path}: unknown key '{key}'{hint}")
    if not _is(value, setting.kind):
        raise ConfigError(
            f"--config {path}: '{key}' must be {_KINDS[setting.kind]}, not {type(value).__name__}"
        )
    if setting.path:
        join = os.path.join
        value = [join(base, v) for v in value] if isinstance(value, list) else join(base, value)
    return value


_KINDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
          list: "a list of strings"}  # fmt: skip


def _is(value: Any, kind: type) -> bool:
    if kind is list:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


def server_config(values: Mapping[str, Any]) -> ServerConfig:
    """``ServerConfig`` from settings by key (None or absent: the default)."""
    fields: dict[str, Any] = {}
    for s in SETTINGS:
        value = values.get(s.key)
        value = s.default if value is None else value
        if value is None:
            continue
        if s.kind is list:
            value = tuple(value)
        elif s.scale != 1:
            value = int(value * s.scale)
        fields[s.field] = value
    if not fields.get("data_roots"):
        raise ConfigError("no data root: give --data-root DIR or data-root in the config file")
    return ServerConfig(**fields)
