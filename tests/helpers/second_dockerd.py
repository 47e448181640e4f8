"""A private, throw-away Docker engine for tests that must stop and restart Docker.

``SecondDockerd(root)`` runs ``dockerd`` with everything under ``root`` (default
``/tmp/mw-d2-<random>``): socket ``root/docker.sock``, ``--data-root root/data``,
``--exec-root root/exec``, ``--pidfile root/docker.pid``, no bridge, no iptables, a short
``--shutdown-timeout``. dockerd starts and supervises its own containerd (socket under the
exec root), so nothing is shared with the main engine; containers run there live only in
this engine and never appear in the main engine's listings.

    d2 = SecondDockerd()
    d2.start()                  # waits until /_ping answers
    client = d2.client()        # docker.DockerClient on d2.url
    d2.stop()                   # SIGTERM, wait: the socket goes away, data stays
    d2.start()                  # same data root: images survive the restart
    d2.cleanup()                # kill everything it started, unmount, remove root

``cleanup()`` is safe to call at any point (also after a failed start): it kills the
process group of every dockerd it started, then any containerd / shim still naming the
root on its command line (the shims leave the group with setsid) and every process in a
cgroup of one of its containers (they outlive a killed engine), unmounts what the
engine mounted under the root, removes the cgroups of its containers and the directory.
Use it from a fixture finalizer.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

from . import images, procs

SHUTDOWN_TIMEOUT_S = 2   # dockerd stops its containers with this grace before SIGKILL


def ping(sock_path: str, timeout: float = 2.0) -> bool:
    """True when a Docker engine answers GET /_ping on the unix socket ``sock_path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(sock_path)
            s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            head = s.recv(64)
    except OSError:  # absent, refused or hung socket: not answering
        return False
    return head.startswith(b"HTTP/1.") and b" 200 " in head.split(b"\r\n", 1)[0]


class SecondDockerd:
    """One private dockerd (plus its own containerd) rooted in a temporary directory."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root or f"/tmp/mw-d2-{uuid.uuid4().hex[:8]}")
        self.sock = str(self.root / "docker.sock")
        self.url = f"unix://{self.sock}"
        self.log_path = self.root / "dockerd.log"
        self.proc: subprocess.Popen | None = None
        self._started: list[subprocess.Popen] = []
        self._clients: list = []

    def argv(self) -> list[str]:
        return [
            "dockerd",
            "--host", self.url,
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "docker.pid"),
            "--bridge=none", "--iptables=false", "--ip6tables=false",
            "--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S),
            "--log-level", "warn",
        ]

    def start(self, timeout: float = 60.0) -> None:
        """Starts dockerd and waits until it answers on its socket."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"private dockerd already running (pid {self.proc.pid})")
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self._started.append(self.proc)
        deadline = time.monotonic() + timeout
        while not ping(self.sock):
            if self.proc.poll() is not None:
                raise RuntimeError(f"private dockerd exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"private dockerd did not answer within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to dockerd and wait for it (and the containerd it supervises) to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        procs.wait_until(lambda: not ping(self.sock, 0.5), 10, 0.1, "private dockerd socket closed")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, timeout: int = 30):
        """A docker.DockerClient for this engine (closed by cleanup())."""
        import docker

        client = docker.DockerClient(base_url=self.url, version="auto", timeout=timeout)
        self._clients.append(client)
        return client

    def load_busybox_image(self, tag: str = "mw-d2/busybox:1") -> str:
        """Imports a busybox-only image (offline, tests.helpers.images) into this engine."""
        return images.import_image(self.client(), tag, {})

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no dockerd log)"

    # ---------------------------------------------------------------------- cleanup

    def cleanup(self) -> list[str]:
        """Removes containers, kills every process it started, unmounts and deletes the root.
        Returns what could not be cleaned (empty when everything went)."""
        problems: list[str] = []
        if self.running():
            problems += self._remove_containers()
        for c in self._clients:
            c.close()
        self._clients.clear()
        for p in self._started:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:  # already gone between poll and kill
                    pass
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    problems.append(f"dockerd pid {p.pid} did not die")
        for pid in self._stray_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:  # exited on its own meanwhile
                pass
        procs.wait_until(lambda: not self._stray_pids(), 10, 0.1, "private containerd/shims/containers gone")
        problems += self._remove_cgroups()
        problems += self._unmount_all()
        shutil.rmtree(self.root, ignore_errors=True)
        if self.root.exists():
            problems.append(f"could not remove {self.root}")
        return problems

    def _remove_containers(self) -> list[str]:
        problems = []
        try:
            client = self.client(timeout=10)
            for c in client.containers.list(all=True):
                c.remove(force=True)
        except Exception as exc:  # noqa: BLE001 - killing the engine below removes them anyway
            problems.append(f"removing private containers: {exc}")
        return problems

    def _container_ids(self) -> list[str]:
        try:
            return [d.name for d in (self.root / "data" / "containers").iterdir()]
        except OSError:  # never started, or already removed
            return []

    def _stray_pids(self) -> list[int]:
        """containerd and shims of this engine (their command lines name the root) and the
        processes of its containers (their cgroups name a container id of this engine),
        which outlive a killed engine."""
        marker = str(self.root)
        ids = self._container_ids()
        out = []
        for pid in procs.pids():
            try:
                if any(marker in arg for arg in procs.cmdline(pid)):
                    out.append(pid)
                elif ids and any(cid in procs.cgroup(pid) for cid in ids):
                    out.append(pid)
            except OSError:  # exited while we looked
                continue
        return [p for p in out if p != os.getpid()]

    def _remove_cgroups(self) -> list[str]:
        """Empty cgroup directories of this engine's containers (v1 hierarchies and v2)."""
        problems = []
        for cid in self._container_ids():
            # default cgroup parent "docker": /sys/fs/cgroup/<hierarchy>/docker/<id> (v1), /sys/fs/cgroup/docker/<id> (v2)
            for d in [*Path("/sys/fs/cgroup").glob(f"*/docker/{cid}"), Path(f"/sys/fs/cgroup/docker/{cid}")]:
                try:
                    d.rmdir()
                except FileNotFoundError:  # runc removed it already
                    pass
                except OSError as exc:
                    problems.append(f"cgroup {d}: {exc}")
        return problems

    def _unmount_all(self) -> list[str]:
        marker = str(self.root) + "/"
        problems = []
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        for point in sorted((p for p in points if p.startswith(marker)), key=len, reverse=True):
            res = subprocess.run(["umount", "-l", point], capture_output=True, text=True)
            if res.returncode != 0:
                problems.append(f"umount {point}: {res.stderr.strip()}")
        return problems
