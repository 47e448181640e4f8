"""Alerts POSTed as JSON to an HTTP(S) endpoint.

TLS is verified against the system trust store (``SSL_CERT_FILE``/``SSL_CERT_DIR`` add a
private CA). With a secret, every POST carries ``X-Minerwatch-Timestamp: <unix seconds>``
and ``X-Minerwatch-Signature: sha256=<hex>``, the HMAC-SHA256 of the timestamp, a ``.`` and
the exact body (``b"1700000000." + body``): a receiver checks the signature, rejects a
timestamp more than a few minutes from its clock, and remembers the signatures it accepted
within that window, so a captured request cannot be replayed (each attempt, retries
included, is signed anew with its own timestamp; ``event.id`` tells a retry from a new
alert). The secret file must be a regular file owned by root (by the user running the agent,
when that is not root) that nobody else may read or write (mode 0600 or 0400). Any answer but 2xx is a failure and is retried; redirects are
not followed (a POST turned into a GET would look delivered). The secret and the URL's path
and query (which often hold tokens) never appear in a log line or an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import ssl
import stat
import time
import urllib.error
import urllib.request

from agent import __version__
from agent.sinks.base import Record, SinkError, safe_url

SIGNATURE_HEADER = "X-Minerwatch-Signature"
TIMESTAMP_HEADER = "X-Minerwatch-Timestamp"
EVENT_ID_HEADER = "X-Minerwatch-Event-Id"
_MAX_SECRET = 4096


class SecretFileError(ValueError):
    """The webhook secret file is unusable; the message never contains the secret."""


def load_secret(path: str, *, euid: int | None = None) -> bytes:
    """The secret from ``path`` (surrounding whitespace stripped).

    Refuses anything but a regular file owned by root (by ``euid``, the effective user,
    when that is not root) with no permission bits for group or others (0600, 0400), and an
    empty one. It is opened without blocking and without becoming a controlling terminal, and
    checked on the open descriptor, so a swap between check and read cannot change the answer.
    """
    euid = os.geteuid() if euid is None else euid
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        raise SecretFileError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SecretFileError(f"{path} is not a regular file")
        if st.st_uid not in (0, euid):
            owner = "root" if euid == 0 else f"root or uid {euid}"
            raise SecretFileError(f"{path} is owned by uid {st.st_uid}, not {owner}; fix: chown root {path}")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise SecretFileError(
                f"{path} has mode {mode:04o}: group or other users may access it, it must be 0600; "
                f"fix: chmod 600 {path}"
            )
        secret = os.read(fd, _MAX_SECRET + 1).strip()
    finally:
        os.close(fd)
    if not secret:
        raise SecretFileError(f"{path} is empty")
    if len(secret) > _MAX_SECRET:
        raise SecretFileError(f"{path} is longer than {_MAX_SECRET} bytes")
    return secret


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header for ``body`` sent at ``timestamp`` (the timestamp header's value):
    ``sha256=`` and the hex HMAC-SHA256 of ``timestamp + "." + body``."""
    return "sha256=" + hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None  # urllib then raises HTTPError for the 3xx: a failure, retried


class WebhookSink:
    name = "webhook"

    def __init__(self, url: str, *, secret: bytes | None = None, timeout: float = 10.0,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"expected an http(s) URL, got {safe_url(url)!r}")
        self._url, self._secret, self._timeout = url, secret, timeout
        context = ssl_context or ssl.create_default_context()  # verifies certificate and host name
        self._opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect())

    def __repr__(self) -> str:
        return f"WebhookSink({safe_url(self._url)!r}, signed={self._secret is not None})"

    def describe(self) -> str:
        return f"webhook {safe_url(self._url)}"

    def reopen(self) -> None:
        """One connection per request; nothing to reopen."""

    def close(self) -> None:
        """Nothing held open."""

    def send(self, record: Record) -> None:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"minerwatch/{__version__}",
            EVENT_ID_HEADER: str((record.alert.get("event") or {}).get("id", "")),
        }
        if self._secret is not None:
            timestamp = str(int(time.time()))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = signature(self._secret, timestamp, record.line)
        request = urllib.request.Request(self._url, data=record.line, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                status = response.status
                response.read(65536)
        except urllib.error.HTTPError as exc:
            status = exc.code
            exc.close()
        except urllib.error.URLError as exc:
            raise SinkError(self.name, _reason(exc.reason)) from None
        except (OSError, http.client.HTTPException) as exc:  # timeouts, resets, malformed answers
            raise SinkError(self.name, _reason(exc)) from None
        if not 200 <= status < 300:
            # 413: this alert will never fit; anything else may pass later (auth fixed, server back).
            raise SinkError(self.name, f"HTTP {status}", permanent=status == 413)


def _reason(exc: object) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
