"""DockerWatcher against real engines: the main one, and a private dockerd that the tests
start late, stop and restart (tests/helpers/second_dockerd.py)."""
from __future__ import annotations

import os
import random
import time

import pytest
import structlog

from agent.collectors import docker_api
from agent.collectors.docker_api import ContainerGone, DockerHandle
from agent.collectors.docker_events import DockerWatcher, event_from_message, normalise_action
from agent.events import ContainerEvent, EventQueue
from tests.helpers import procs
from tests.helpers.second_dockerd import SecondDockerd

MAIN_URL = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
WAIT = 30.0   # generous: the machine is shared


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture
def watcher():
    """make(url, **kw) -> started DockerWatcher with its queue; stopped (and checked) at teardown."""
    started: list[DockerWatcher] = []

    def make(url: str, **kw) -> tuple[DockerWatcher, EventQueue]:
        kw.setdefault("backoff_initial", 0.2)
        kw.setdefault("backoff_max", 1.0)
        q = EventQueue(1000)
        w = DockerWatcher(url, q, **kw).start()
        started.append(w)
        return w, q

    yield make
    stuck = [w.url for w in started if not w.stop(timeout=5)]
    assert not stuck, f"docker-events threads did not stop: {stuck}"


@pytest.fixture
def dockerd2():
    """A private dockerd, not started yet; killed and removed at teardown, pass or fail."""
    d2 = SecondDockerd()
    try:
        yield d2
    finally:
        problems = d2.cleanup()
        assert not problems, f"private dockerd cleanup: {problems}"


def wait_event(q: EventQueue, match, timeout: float = WAIT, seen: list | None = None):
    """The first queued event for which ``match(event)`` is true; every event taken goes to ``seen``."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ev = q.get(timeout=min(left, 0.5))
        if ev is None:
            continue
        if seen is not None:
            seen.append(ev)
        if match(ev):
            return ev
    raise TimeoutError(f"no matching event within {timeout}s (seen: {seen})")


def is_resync(ev) -> bool:
    return ev == ContainerEvent("resync")


# ------------------------------------------------------------------------- pure parts


def test_exec_start_action_is_normalised():
    """Docker's "exec_start: sh -c ..." becomes plain exec_start; other actions pass unchanged."""
    assert normalise_action("exec_start: sh -c echo hi") == "exec_start"
    assert normalise_action("start") == "start"
    msg = {"Type": "container", "Action": "exec_start: ls -l", "Actor": {"ID": "abc"}}
    assert event_from_message(msg) == ContainerEvent("exec_start", "abc")


def test_uninteresting_messages_are_not_forwarded():
    """Non-container events, unlisted actions and messages without an id yield nothing."""
    assert event_from_message({"Type": "network", "Action": "connect", "Actor": {"ID": "n"}}) is None
    assert event_from_message({"Type": "container", "Action": "exec_create: ls", "Actor": {"ID": "a"}}) is None
    assert event_from_message({"Type": "container", "Action": "start", "Actor": {}}) is None
    assert event_from_message({"status": "unpause", "id": "old"}) == ContainerEvent("unpause", "old")


def test_backoff_grows_with_jitter_up_to_the_cap():
    """Delays double per failure, carry jitter, and never exceed backoff_max."""
    w = DockerWatcher("unix:///nonexistent", EventQueue(), backoff_initial=0.5, backoff_max=4,
                      rng=random.Random(1))
    delays = [w._backoff(n) for n in range(1, 9)]
    assert 0.25 <= delays[0] <= 0.5 and 0.5 <= delays[1] <= 1.0
    assert all(2.0 <= d <= 4.0 for d in delays[3:])
    assert len({round(d, 6) for d in delays[3:]}) > 1, "jittered, not a fixed cap"


# ----------------------------------------------------------------------- main engine


def test_resync_first_then_container_lifecycle(docker_client, base_image, docker_run, watcher):
    """After a resync, start/exec/unpause/die/destroy of a container arrive in order, and
    nothing else about it (create, pause, kill, exec_create...)."""
    w, q = watcher(MAIN_URL)
    assert w.wait_connected(WAIT), w.last_error
    assert q.get(timeout=WAIT) == ContainerEvent("resync"), "resync must be the first event"
    c = docker_run(base_image, ["sleep", "60"])
    assert wait_event(q, lambda e: e.container_id == c.id) == ContainerEvent("start", c.id)
    handle = DockerHandle.of(docker_client)
    info = handle.inspect_container(c.id)
    assert info.id == c.id and info.pid > 0
    c.exec_run(["true"])
    c.pause()
    c.unpause()
    c.kill()
    c.remove(force=True)
    actions = ["start"]
    while actions[-1] != "destroy":
        actions.append(wait_event(q, lambda e: e.container_id == c.id).action)
    assert actions == ["start", "exec_start", "unpause", "die", "destroy"]
    with pytest.raises(ContainerGone):
        handle.inspect_container(c.id)
    assert w.is_alive() and w.connected and w.reconnects == 0


def test_broken_stream_replays_missed_events(docker_client, base_image, docker_run, watcher):
    """When the stream drops while Docker stays up, the reconnect (since=last event) replays
    the start of a container that started in the gap, after a fresh resync."""
    w, q = watcher(MAIN_URL, backoff_initial=6.0, backoff_max=6.0)   # a 3-6 s gap
    assert w.wait_connected(WAIT)
    assert wait_event(q, is_resync)
    first = docker_run(base_image, ["sleep", "60"])   # gives the watcher a "last event" time
    wait_event(q, lambda e: e == ContainerEvent("start", first.id))
    with structlog.testing.capture_logs() as logs:
        w._close_stream()   # the connection drops (as a proxy or a network hiccup would do it)
        procs.wait_until(lambda: not w.connected, WAIT, 0.05, "watcher noticed the drop")
        gap = docker_run(base_image, ["sleep", "60"])
        assert not w.connected, "reconnected before the container started: gap too short to test"
        seen: list = []
        wait_event(q, lambda e: e == ContainerEvent("start", gap.id), seen=seen)
    assert ContainerEvent("resync") in seen, "a resync comes with every reconnection"
    assert w.reconnects == 1 and w.is_alive()
    assert any(e["event"] == "docker_disconnected" for e in logs)


def test_stop_is_prompt_while_streaming(watcher):
    """stop() closes an idle, blocking event stream and joins the thread well within 2 s."""
    w, _ = watcher(MAIN_URL)
    assert w.wait_connected(WAIT)
    t0 = time.monotonic()
    assert w.stop(timeout=2.0)
    assert time.monotonic() - t0 < 2.0
    assert not w.connected


def test_crash_barrier_survives_an_unexpected_error(watcher):
    """An unexpected exception inside a cycle is logged and retried; the thread lives on and connects."""
    calls = []

    def flaky_connect(url, timeout):
        calls.append(url)
        if len(calls) == 1:
            raise RuntimeError("bug in a cycle")
        return docker_api.connect(url, timeout)

    with structlog.testing.capture_logs() as logs:
        w, q = watcher(MAIN_URL, connect=flaky_connect)
        assert w.wait_connected(WAIT), w.last_error
    assert q.get(timeout=WAIT) == ContainerEvent("resync")
    assert len(calls) >= 2 and w.is_alive() and w.crashes == 1
    assert any(e["event"] == "docker_watcher_error" for e in logs)


# -------------------------------------------------------------------- private dockerd


def test_absent_socket_then_docker_appears(dockerd2, watcher):
    """Without a socket the watcher keeps running disconnected (process-only mode, said once),
    and connects with a resync as soon as Docker comes up."""
    with structlog.testing.capture_logs() as logs:
        w, q = watcher(dockerd2.url)
        procs.wait_until(lambda: w.last_error, WAIT, 0.05, "first connection attempt failed")
        time.sleep(1.0)   # several retries at backoff_max=1
        assert w.is_alive() and not w.connected
        assert q.get(timeout=0.1) is None
        dockerd2.start()
        assert w.wait_connected(WAIT), w.last_error
    assert q.get(timeout=WAIT) == ContainerEvent("resync")
    unavailable = [e for e in logs if e["event"] == "docker_unavailable"]
    assert len(unavailable) == 1 and unavailable[0]["mode"] == "process-only"
    assert w.last_error == "" and w.reconnects == 0


def test_docker_restart_reconnects_and_finds_new_container(dockerd2, watcher):
    """Docker stops and comes back: the watcher reconnects with a resync, and a container
    started right after the restart is inspected (by its event or by the resync)."""
    dockerd2.start()
    image = dockerd2.load_busybox_image()
    w, q = watcher(dockerd2.url)
    assert w.wait_connected(WAIT)
    assert wait_event(q, is_resync)

    with structlog.testing.capture_logs() as logs:
        dockerd2.stop()
        procs.wait_until(lambda: not w.connected, WAIT, 0.05, "watcher noticed dockerd stopping")
        dockerd2.start()
        client = dockerd2.client()
        c = client.containers.run(image, ["sleep", "60"], detach=True, network_mode="none")
        # What the daemon does: a resync lists every running container, a start inspects one.
        inspected: set[str] = set()
        seen: list = []
        docker = DockerHandle.of(client, dockerd2.url)

        def handle(ev) -> bool:
            if is_resync(ev):
                inspected.update(docker.running())
            elif ev.action == "start":
                inspected.add(docker.inspect_container(ev.container_id).id)
            return c.id in inspected

        wait_event(q, handle, seen=seen)
        if not any(is_resync(e) for e in seen):
            wait_event(q, is_resync, seen=seen)
    assert w.reconnects == 1 and w.connected and w.is_alive()
    assert c.id in docker.running()
    assert any(e["event"] == "docker_disconnected" for e in logs)
