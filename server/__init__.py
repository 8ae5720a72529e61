"""sparsemm's gRPC service (package ``sparsemm.server``, directory ``server/``).

``app`` assembles the server (TLS, tokens, health, reflection) from its ``settings``
(flags and config file), ``service`` is the thin servicer, ``convert`` the one place
that maps protobuf messages to the solver's types, ``jobs`` the queue and the worker
processes (``worker``, which runs ``fitting`` and ``comparison`` tasks), ``admission``
the memory budget, ``disclosure`` the disclosure-control policy, ``store`` the durable
DuckDB job store, ``paths`` and ``confined`` keep data access under the data roots,
``outputs`` writes tables under the output root, ``auth`` the bearer tokens.
"""

from .app import ConfigError, ServerConfig, SparseMMServer, serve

__all__ = ["ConfigError", "ServerConfig", "SparseMMServer", "serve"]
