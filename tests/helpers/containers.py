"""Docker helpers for tests: connect, run containers and tag images with tracking, and
guaranteed cleanup.

Everything a test starts carries the labels ``minerwatch.test=1`` and
``minerwatch.test.session=<SESSION_ID>`` (one id per pytest process), so the session guard
only ever looks at (and removes) what THIS test session started - other people's
containers on the same engine are never touched.

Tracking works with scopes: conftest opens one scope per test (autouse) and one for the
session; ``run_container``/``tag_image`` register into the innermost open scope and the
scope's cleanup force-removes the containers (unpausing first) and removes the tags.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import procs

LABEL = "minerwatch.test"
SESSION_LABEL = "minerwatch.test.session"
SESSION_ID = os.environ.get("MINERWATCH_TEST_SESSION") or uuid.uuid4().hex[:12]
ALLOWED_NETWORKS = ("none", "host")
REPO_ROOT = Path(__file__).resolve().parents[2]

# A real, widely published Monero address (the Monero general fund): syntactically valid,
# checksum included.
TEST_WALLET = (
    "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"
)


class DockerUnavailable(RuntimeError):
    pass


def docker_required() -> bool:
    """True when Docker tests must not be skipped (CI, or MINERWATCH_REQUIRE_DOCKER=1)."""
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("MINERWATCH_REQUIRE_DOCKER") == "1"


def connect_docker(start: bool = True, timeout: int = 120):
    """Returns a docker.DockerClient (API version negotiated) for $DOCKER_HOST or
    /var/run/docker.sock. When the engine does not answer and we are root, runs
    scripts/start-dockerd.sh once. Raises DockerUnavailable with the reason."""
    import docker

    base_url = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    def attempt():
        client = docker.DockerClient(base_url=base_url, version="auto", timeout=timeout)
        client.ping()
        return client

    try:
        return attempt()
    except Exception as first:  # noqa: BLE001
        reason = f"Docker engine not reachable at {base_url}: {first}"
    script = REPO_ROOT / "scripts" / "start-dockerd.sh"
    if start and os.geteuid() == 0 and script.exists() and not os.environ.get("DOCKER_HOST"):
        res = subprocess.run(["bash", str(script)], capture_output=True, text=True)
        if res.returncode == 0:
            try:
                return attempt()
            except Exception as exc:  # noqa: BLE001
                reason = f"dockerd started but the engine is not usable: {exc}"
        else:
            reason = f"could not start dockerd: {res.stderr.strip()[-2000:]}"
    elif os.geteuid() != 0:
        reason += " (not root: cannot start dockerd; run ./scripts/test.sh as root)"
    raise DockerUnavailable(reason)


# --------------------------------------------------------------------------- tracking


@dataclass
class Scope:
    name: str
    containers: list = field(default_factory=list)   # (client, container id, name)
    tags: list = field(default_factory=list)         # (client, "repo:tag")
    errors: list = field(default_factory=list)


_lock = threading.Lock()
_scopes: list[Scope] = [Scope("fallback")]
_clients: list = []   # every client that started something, for the leak guard
SESSION_SCOPE: Scope | None = None   # set by conftest: lives until the end of the session


def _current() -> Scope:
    with _lock:
        return _scopes[-1]


def _remember_client(client) -> None:
    with _lock:
        if all(c is not client for c in _clients):
            _clients.append(client)


@contextlib.contextmanager
def tracking_scope(name: str = "scope") -> Iterator[Scope]:
    """Everything run/tagged inside is removed when the block exits (also on errors)."""
    scope = Scope(name)
    with _lock:
        _scopes.append(scope)
    try:
        yield scope
    finally:
        with _lock:
            if scope in _scopes:
                _scopes.remove(scope)
        cleanup_scope(scope)


MAX_UNANSWERED = 3  # timed-out removals before a cleanup gives up on the engine


def remove_container(client, container_id: str) -> None:
    """Force-removes a container (unpausing it first); a missing one is fine."""
    import docker

    try:
        c = client.containers.get(container_id)
    except docker.errors.NotFound:
        return
    try:
        if c.status == "paused":
            c.unpause()
    except docker.errors.APIError:
        pass
    try:
        c.remove(force=True, v=True)
    except docker.errors.NotFound:
        return
    except docker.errors.APIError as exc:
        if "already in progress" in str(exc):
            wait_gone(client, container_id)
            return
        raise


def wait_gone(client, container_id: str, timeout: float = 30) -> None:
    import docker

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.containers.get(container_id)
        except docker.errors.NotFound:
            return
        time.sleep(0.1)


def cleanup_scope(scope: Scope) -> list[str]:
    import docker

    import requests

    errors = []
    unanswered = 0  # removals the engine did not answer within the client's timeout
    for client, cid, name in reversed(scope.containers):
        if unanswered >= MAX_UNANSWERED:  # a wedged engine: fail now, not after a timeout per container
            errors.append(f"container {name} ({cid[:12]}): not removed, the engine stopped answering")
            continue
        try:
            remove_container(client, cid)
        except requests.exceptions.RequestException as exc:
            unanswered += 1
            errors.append(f"container {name} ({cid[:12]}): {exc}")
        except Exception as exc:  # noqa: BLE001
            errors.append(f"container {name} ({cid[:12]}): {exc}")
    scope.containers.clear()
    for client, ref in reversed(scope.tags):
        try:
            client.images.remove(ref, noprune=True)
        except docker.errors.ImageNotFound:
            pass
        except Exception as exc:  # noqa: BLE001
            errors.append(f"image tag {ref}: {exc}")
    scope.tags.clear()
    scope.errors.extend(errors)
    return errors


def session_containers(client, all_sessions: bool = False) -> list:
    """Containers (running or not) labelled by this test session (or by any session)."""
    label = LABEL if all_sessions else f"{SESSION_LABEL}={SESSION_ID}"
    return client.containers.list(all=True, filters={"label": label})


# ------------------------------------------------------------------------ containers


def _check_network(network: str) -> None:
    if network in ALLOWED_NETWORKS or network.startswith("container:"):
        return
    raise ValueError(
        f"test containers use network 'none', 'host' or 'container:NAME', not {network!r}"
    )


def run_container(client, image: str, cmd=None, name_prefix: str = "mwtest",
                  network: str = "none", *, scope: Scope | None = None, **kw):
    """Creates and starts a container (detached), tracked in the current scope so it is
    force-removed at the end of the test. Returns the docker Container (reloaded after
    start). ``network``: "none" (default), "host" or "container:NAME". Other keyword
    arguments go to ``client.containers.create`` (entrypoint, environment, volumes,
    working_dir, user, labels, cap_add, ...); ``name=`` overrides the generated name
    ``<name_prefix>-<random>``; ``scope=`` registers into that Scope instead of the
    innermost one (session-scoped fixtures pass the session scope)."""
    _check_network(network)
    for k in ("detach", "remove", "stdout", "stderr", "stream"):
        kw.pop(k, None)
    labels = {LABEL: "1", SESSION_LABEL: SESSION_ID}
    labels.update(kw.pop("labels", None) or {})
    name = kw.pop("name", None) or f"{name_prefix}-{uuid.uuid4().hex[:8]}"
    _remember_client(client)
    c = client.containers.create(image, cmd, name=name, network_mode=network, labels=labels, **kw)
    scope = scope or _current()
    with _lock:
        scope.containers.append((client, c.id, name))
    c.start()
    c.reload()
    return c


def tag_image(client, source: str, target: str, *, scope: Scope | None = None) -> str:
    """Tags image ``source`` as ``target`` ("repo[:tag]", default tag latest), tracked so
    the tag is removed at the end of the test (or of ``scope``). Returns "repo:tag"."""
    if ":" in target.rsplit("/", 1)[-1]:
        repo, tag = target.rsplit(":", 1)
    else:
        repo, tag = target, "latest"
    _remember_client(client)
    client.images.get(source).tag(repo, tag)
    ref = f"{repo}:{tag}"
    scope = scope or _current()
    with _lock:
        scope.tags.append((client, ref))
    return ref


def track_image(client, ref: str, *, scope: Scope | None = None) -> None:
    """Removes image ``ref`` (a tag) at the end of the test (or of ``scope``)."""
    _remember_client(client)
    scope = scope or _current()
    with _lock:
        scope.tags.append((client, ref))


def container_pids(container) -> list[int]:
    """Host PIDs of the container's processes (found through /proc/PID/cgroup)."""
    return procs.pids_in_cgroup_of(container.id)


def wait_for_process(container, name: str, timeout: float = 15.0) -> int:
    """Waits until a process of ``container`` runs an executable whose argv[0] basename is
    ``name``; returns its host PID."""

    def find():
        for pid in container_pids(container):
            try:
                argv = procs.cmdline(pid)
            except OSError:
                continue
            if argv and os.path.basename(argv[0]) == name:
                return pid
        return None

    return procs.wait_until(find, timeout, 0.05, f"process {name!r} in container {container.name}")


def exec_output(container, cmd) -> str:
    res = container.exec_run(cmd)
    return res.output.decode("utf-8", "replace")


@dataclass
class MinerContainer:
    container: object
    pid: int            # host PID of the miner process
    wallet: str
    pool_port: int
    binary: str

    @property
    def id(self) -> str:
        return self.container.id

    @property
    def name(self) -> str:
        return self.container.name

    def logs(self) -> str:
        return self.container.logs().decode("utf-8", "replace")

    def pool_lines(self) -> list[str]:
        """Lines the in-container fakepool received ("RECV ..." in the container log)."""
        return [ln[5:] for ln in self.logs().splitlines() if ln.startswith("RECV ")]


def start_miner_container(
    client,
    image: str,
    *,
    wallet: str = TEST_WALLET,
    port: int = 3333,
    threads: int = 1,
    seconds: int = 120,
    binary: str = "fakeminer",
    extra_args: str = "",
    name_prefix: str = "mwtest-miner",
    wait: bool = True,
    timeout: float = 20.0,
    **kw,
) -> MinerContainer:
    """Starts ``sh -c 'fakepool PORT & sleep 0.3; exec BINARY -o stratum+tcp://127.0.0.1:PORT
    -u WALLET -t THREADS --seconds SECONDS EXTRA'`` with --network none (pool and miner
    share the container's loopback). With ``wait``, returns once the miner process is
    visible on the host and has an ESTABLISHED connection to the pool. ``binary`` may be
    fakeminer, fakeminer-plain or a path/renamed copy inside the image."""
    script = (
        f"fakepool {port} & sleep 0.3; exec {binary} -o stratum+tcp://127.0.0.1:{port} "
        f"-u {wallet} -t {threads} --seconds {seconds} {extra_args}"
    ).strip()
    kw.setdefault("network", "none")
    c = run_container(client, image, ["sh", "-c", script], name_prefix=name_prefix, **kw)
    pid = 0
    if wait:
        pid = wait_for_process(c, os.path.basename(binary), timeout)
        procs.wait_until(lambda: procs.established_to(pid, port), timeout, 0.05,
                         f"miner in {c.name} connected to the pool on port {port}")
    return MinerContainer(container=c, pid=pid, wallet=wallet, pool_port=port, binary=binary)
