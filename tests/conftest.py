"""Shared fixtures for the minerwatch test suite.

Fixtures (see tests/helpers/* for the helper APIs):
  helper_bins         session  HelperBins: paths of fakeminer, fakeminer-plain, fakepool, burner
  docker_client       session  docker.DockerClient; skips when no engine can be started,
                               FAILS instead when CI=true or MINERWATCH_REQUIRE_DOCKER=1
  base_image          session  "minerwatch-test/base:1" (built once, reused across sessions)
  docker_run          function run(image, cmd=None, name_prefix="mwtest", network="none", **kw)
                               -> Container, removed at the end of the test
  docker_tag          function tag(source, target) -> "repo:tag", untagged at the end of the test
  docker_image        function make(tag, files, **kw) -> tag: one-off image, removed at the end
  miner_in_container  function MinerContainer: fakepool + fakeminer in one --network none
                               container, miner connected (pid = host PID of fakeminer)
  spawn               function Spawner: spawn(args, **popen_kw) -> Popen, killed at teardown
  fake_pool           function started FakePool on 127.0.0.1:<ephemeral>
  session_docker_scope session Scope for containers/tags that must live for the session
Autouse: every test gets its own docker tracking scope; at the end of the session a guard
fails loudly if containers labelled with this session's id are left behind (and removes
them). Tests that use docker_client are marked ``docker`` automatically.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.agentproc import AgentProcess  # noqa: E402
from tests.helpers import build, containers, images, procs  # noqa: E402
from tests.helpers.pool import FakePool  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "docker: needs a running Docker engine")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "docker_client" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)


# ------------------------------------------------------------------------- binaries


@pytest.fixture(scope="session")
def helper_bins() -> build.HelperBins:
    return build.build_helpers()


# --------------------------------------------------------------------------- docker


@pytest.fixture(scope="session", autouse=True)
def _mw_session_guard():
    """Session scope for docker objects + leak guard at the very end."""
    with containers.tracking_scope("session") as scope:
        containers.SESSION_SCOPE = scope
        yield scope
    problems = list(scope.errors)
    for client in list(containers._clients):
        try:
            leaked = containers.session_containers(client)
        except Exception as exc:  # noqa: BLE001 - engine gone: report, don't hide
            problems.append(f"could not list test containers: {exc}")
            continue
        for c in leaked:
            problems.append(f"leaked container {c.name} ({c.short_id}, {c.status})")
            try:
                containers.remove_container(client, c.id)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"  ... and could not remove it: {exc}")
    if problems:
        pytest.fail("test session left Docker objects behind:\n  " + "\n  ".join(problems),
                    pytrace=False)


@pytest.fixture(scope="session")
def session_docker_scope(_mw_session_guard):
    return _mw_session_guard


@pytest.fixture(autouse=True)
def _mw_docker_scope(request):
    """Each test's containers and tags are removed when it ends, pass or fail."""
    with containers.tracking_scope(request.node.nodeid) as scope:
        yield scope
    if scope.errors:
        pytest.fail("cleanup of test containers failed:\n  " + "\n  ".join(scope.errors),
                    pytrace=False)


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = containers.connect_docker()
    except containers.DockerUnavailable as exc:
        if containers.docker_required():
            pytest.fail(f"Docker is required here (CI) but unavailable: {exc}", pytrace=False)
        pytest.skip(f"no Docker engine: {exc}")
    containers._remember_client(client)
    yield client
    client.close()


@pytest.fixture(scope="session")
def base_image(docker_client, helper_bins) -> str:
    return images.build_base_image(docker_client, helper_bins)


@pytest.fixture
def docker_run(docker_client):
    def run(image, cmd=None, name_prefix="mwtest", network="none", **kw):
        return containers.run_container(docker_client, image, cmd, name_prefix, network, **kw)

    return run


@pytest.fixture
def docker_tag(docker_client):
    def tag(source, target):
        return containers.tag_image(docker_client, source, target)

    return tag


@pytest.fixture
def docker_image(docker_client):
    """make(tag, files, **kw) -> tag: a one-off busybox-based image (see
    images.import_image), removed at the end of the test."""

    def make(tag, files, **kw):
        kw.setdefault("track", True)
        return images.import_image(docker_client, tag, files, **kw)

    return make


@pytest.fixture
def miner_in_container(docker_client, base_image) -> containers.MinerContainer:
    return containers.start_miner_container(docker_client, base_image)


# ---------------------------------------------------------------------- host things


@pytest.fixture
def spawn():
    spawner = procs.Spawner()
    try:
        yield spawner
    finally:
        spawner.cleanup()


@pytest.fixture
def fake_pool():
    with FakePool() as pool:
        yield pool


@pytest.fixture
def agent(tmp_path):
    """A real daemon (2 s passes) that alerts from low up, stopped cleanly at the end: what the false-alarm
    and throttled-miner tests watch. A module with its own ``agent`` fixture (test_daemon) overrides it."""
    a = AgentProcess(tmp_path / "agent", interval=2.0, extra='[detect]\nalert_severity = "low"\n').start()
    try:
        yield a
    finally:
        assert a.stop() == 0, a.log()[-2000:]
