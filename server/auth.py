"""Who is calling: bearer tokens (kept only as SHA-256 digests), client certificates.

Token file (``--token-file``): one token a line, ``NAME TOKEN`` or ``NAME sha256:HEX``
(the digest of the token, so the file need not hold the secret), or a bare token;
``#`` starts a comment.  The server keeps only digests and compares them with
``hmac.compare_digest`` against every entry, so timing does not reveal which one
matched.  The caller's identity comes from these credentials (the token's NAME,
or the client certificate's common name under mutual TLS), never from the request.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

import grpc

HEALTH_PREFIX = "/grpc.health.v1.Health/"  # probes need no credentials


class TokenTable:
    def __init__(self, entries: Sequence[tuple[str, bytes]]) -> None:
        if not entries:
            raise ValueError("the token file holds no tokens")
        self._entries = tuple(entries)

    @staticmethod
    def load(path: str) -> TokenTable:
        entries = []
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                words = line.split("#", 1)[0].split()
                if not words:
                    continue
                if len(words) > 2:
                    raise ValueError(f"{path}:{number}: expected 'NAME TOKEN' or a bare token")
                name = words[0] if len(words) == 2 else f"token-{number}"
                entries.append((name, _digest_entry(words[-1], f"{path}:{number}")))
        return TokenTable(entries)

    def identify(self, token: str | None) -> str | None:
        """The name of the entry ``token`` matches, or None."""
        if not token:
            return None
        digest = hashlib.sha256(token.encode("utf-8")).digest()
        found = None
        for name, expected in self._entries:  # no early exit
            if hmac.compare_digest(digest, expected):
                found = name
        return found


def _digest_entry(word: str, where: str) -> bytes:
    if word.startswith("sha256:"):
        try:
            digest = bytes.fromhex(word[len("sha256:") :])
        except ValueError:
            digest = b""
        if len(digest) != 32:
            raise ValueError(f"{where}: 'sha256:' must be followed by 64 hex digits")
        return digest
    return hashlib.sha256(word.encode("utf-8")).digest()


def bearer(metadata: Sequence[Any] | None) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return None


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Authenticator:
    """The identity of a call, from its credentials."""

    def __init__(self, tokens: TokenTable | None, client_certs: bool) -> None:
        self.tokens = tokens
        self.client_certs = client_certs

    def caller(self, context: grpc.ServicerContext) -> str:
        if self.tokens is not None:
            name = self.tokens.identify(bearer(context.invocation_metadata()))
            if name is not None:
                return f"token:{name}"
        if self.client_certs:
            names = context.auth_context().get("x509_common_name") or [b"?"]
            return "cert:" + names[0].decode("utf-8", "replace")
        return "local"


class AuthInterceptor(grpc.ServerInterceptor):
    """Refuses every call without a valid bearer token (health checks excepted)."""

    def __init__(self, tokens: TokenTable) -> None:
        self.tokens = tokens

    def intercept_service(
        self, continuation: Callable[[Any], Any], handler_call_details: Any
    ) -> Any:
        method = handler_call_details.method or ""
        token = bearer(handler_call_details.invocation_metadata)
        if method.startswith(HEALTH_PREFIX) or self.tokens.identify(token) is not None:
            return continuation(handler_call_details)
        handler = continuation(handler_call_details)
        return None if handler is None else _refusing(handler, token is None)


def _refusing(handler: Any, missing: bool) -> Any:
    message = "missing bearer token" if missing else "invalid bearer token"

    def refuse(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kinds = [
        (handler.unary_unary, grpc.unary_unary_rpc_method_handler),
        (handler.unary_stream, grpc.unary_stream_rpc_method_handler),
        (handler.stream_unary, grpc.stream_unary_rpc_method_handler),
        (handler.stream_stream, grpc.stream_stream_rpc_method_handler),
    ]
    for behaviour, make in kinds:
        if behaviour is not None:
            return make(
                refuse,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return None
