"""A fake stratum pool for host-side tests (threaded TCP server on loopback).

    with FakePool() as pool:                        # 127.0.0.1, ephemeral port
        run fakeminer -o pool.url -u WALLET ...
        login = pool.wait_for_login(timeout=5)      # parsed JSON dict of the login line
        assert login["params"]["login"] == WALLET

    FakePool(port=443, tls=True, fallback_ephemeral=True)   # TLS on 443 when free
    FakePool(tls="auto")   # TLS when the client starts a TLS handshake, plain otherwise
                           # (fakeminer speaks plain TCP even for stratum+ssl://)

Only loopback addresses can be bound. Everything received is recorded:
``pool.lines`` (str), ``pool.messages`` (parsed JSON, non-JSON lines skipped),
``pool.peers`` (client (ip, port) tuples in accept order).
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

JOB = {
    "blob": "1010a0d2c7ab06c8f3b1e4b8e0f1c0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e1f2000000001"
    "a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f80904",
    "job_id": "job1",
    "target": "b88d0600",
    "algo": "rx/0",
    "height": 3141592,
    "seed_hash": "6c2f0f7e1f1d3b4c5a69788796a5b4c3d2e1f00112233445566778899aabbccd",
}


def make_self_signed_cert(directory: str | Path, cn: str = "localhost") -> tuple[Path, Path]:
    """Creates a self-signed cert + key (openssl CLI) in ``directory``; returns
    (certfile, keyfile)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "cert.pem", d / "key.pem"
    openssl = shutil.which("openssl")
    if not openssl:
        raise RuntimeError("openssl CLI not found (apt-get install openssl)")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2",
         "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn},IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    os.chmod(key, 0o600)
    return cert, key


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(socketserver.BaseRequestHandler):
    server: "_Server"

    def handle(self) -> None:
        pool = self.server.pool
        sock: socket.socket = self.request
        if pool.tls:
            try:
                if pool.tls == "auto":
                    sock.settimeout(5)
                    first = sock.recv(1, socket.MSG_PEEK)
                    sock.settimeout(None)
                    use_tls = first == b"\x16"
                else:
                    use_tls = True
                if use_tls:
                    sock = pool._ssl_ctx.wrap_socket(sock, server_side=True)
                    pool.tls_connections += 1
            except (OSError, ssl.SSLError):
                return
        pool._register(sock, self.client_address)
        buf = b""
        try:
            while not pool._closing:
                try:
                    chunk = sock.recv(65536)
                except (OSError, ssl.SSLError):
                    break
                if not chunk:
                    break
                buf += chunk
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    if line:
                        pool._on_line(sock, line)
        finally:
            pool._unregister(sock)


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    pool: "FakePool"


class _Server6(_Server):
    address_family = socket.AF_INET6


class FakePool:
    """Threaded stratum pool. Attributes after start(): host, port, address (host, port),
    url ("stratum+tcp://host:port", or stratum+ssl when tls), lines, messages, peers,
    connections (total accepted), tls_connections."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: bool | str = False,
        certfile: str | Path | None = None,
        keyfile: str | Path | None = None,
        respond: bool = True,
        job: dict | None = None,
        fallback_ephemeral: bool = False,
        on_message: Callable[[dict], Any] | None = None,
    ) -> None:
        if not _is_loopback(host):
            raise ValueError(f"FakePool binds loopback addresses only, not {host!r}")
        self.host = "127.0.0.1" if host == "localhost" else host
        self.requested_port = port
        self.tls = tls
        self.respond = respond
        self.job = dict(job or JOB)
        self.fallback_ephemeral = fallback_ephemeral
        self.on_message = on_message
        self.lines: list[str] = []
        self.messages: list[dict] = []
        self.peers: list[tuple] = []
        self.connections = 0
        self.tls_connections = 0
        self._socks: set = set()
        self._lock = threading.Condition()
        self._closing = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._tmpdir: str | None = None
        self._session = 0
        self.certfile = Path(certfile) if certfile else None
        self.keyfile = Path(keyfile) if keyfile else None
        self._ssl_ctx: ssl.SSLContext | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> "FakePool":
        if self.tls:
            if not self.certfile:
                self._tmpdir = tempfile.mkdtemp(prefix="mw-fakepool-")
                self.certfile, self.keyfile = make_self_signed_cert(self._tmpdir)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.certfile), str(self.keyfile) if self.keyfile else None)
            self._ssl_ctx = ctx
        cls = _Server6 if ":" in self.host else _Server
        try:
            server = cls((self.host, self.requested_port), _Handler)
        except OSError:
            if not (self.fallback_ephemeral and self.requested_port):
                raise
            server = cls((self.host, 0), _Handler)
        server.pool = self
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1},
            name=f"FakePool:{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                s.close()
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def __enter__(self) -> "FakePool":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- properties --------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        scheme = "stratum+ssl" if self.tls is True else "stratum+tcp"
        return f"{scheme}://{self.hostport}"

    # -- waiting -----------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[dict], bool] | str, timeout: float = 10.0) -> dict:
        """Waits for a received message matching ``predicate`` (a callable on the parsed
        message, or a stratum method name); returns it. Raises TimeoutError."""
        if isinstance(predicate, str):
            method = predicate
            predicate = lambda m: m.get("method") == method  # noqa: E731
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for m in self.messages:
                    if predicate(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"FakePool {self.hostport}: no matching message in {timeout}s; "
                        f"received {len(self.lines)} lines: {self.lines[-5:]!r}"
                    )
                self._lock.wait(min(left, 0.2))

    def wait_for_login(self, timeout: float = 10.0) -> dict:
        return self.wait_for("login", timeout)

    def wait_for_connection(self, timeout: float = 10.0) -> tuple:
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self.peers:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"FakePool {self.hostport}: no connection in {timeout}s")
                self._lock.wait(min(left, 0.2))
            return self.peers[0]

    def logins(self) -> list[dict]:
        with self._lock:
            return [m for m in self.messages if m.get("method") == "login"]

    # -- internals -----------------------------------------------------------------------
    def _register(self, sock, addr) -> None:
        with self._lock:
            self._socks.add(sock)
            self.peers.append(addr)
            self.connections += 1
            self._lock.notify_all()

    def _unregister(self, sock) -> None:
        with self._lock:
            self._socks.discard(sock)
        try:
            sock.close()
        except OSError:
            pass

    def _on_line(self, sock, line: str) -> None:
        msg = None
        try:
            parsed = json.loads(line)
            if isinstance(parsed, dict):
                msg = parsed
        except ValueError:
            pass
        with self._lock:
            self.lines.append(line)
            if msg is not None:
                self.messages.append(msg)
            self._lock.notify_all()
        if msg is not None and self.on_message:
            self.on_message(msg)
        if not self.respond or msg is None:
            return
        rid = msg.get("id")
        method = msg.get("method")
        if method == "login":
            with self._lock:
                self._session += 1
                sid = f"sess{self._session}"
            result: dict = {
                "id": sid, "job": self.job, "status": "OK",
                "extensions": ["algo", "nicehash", "connect", "tls", "keepalive"],
            }
        elif method == "keepalived":
            result = {"status": "KEEPALIVED"}
        else:
            result = {"status": "OK"}
        reply = json.dumps({"id": rid, "jsonrpc": "2.0", "error": None, "result": result},
                           separators=(",", ":")) + "\n"
        try:
            sock.sendall(reply.encode())
        except (OSError, ssl.SSLError):
            pass
