"""Packaging: the systemd unit, the PyInstaller builds, the .deb, the container image and the DaemonSet.

The builds are cached across runs by a hash of their sources (tests/helpers/packaging_build.py):
the first run of a changed tree spends about a minute in PyInstaller.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
import stat
import subprocess
import tarfile
import tomllib
from pathlib import Path

import pytest

from agent import __version__, config
from tests import alerts_schema
from tests.helpers import dpkg_install, packaging_build
from tests.helpers.containers import docker_required

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "minerwatch.service"
CAPS = {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_NET_ADMIN", "CAP_KILL"}
MAX_EXPOSURE = 4.0
BUILD = pytest.mark.timeout(1200)  # a cold PyInstaller build on a busy 2-core machine


def _systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if docker_required():
            pytest.fail("systemd-analyze missing (apt-get install systemd)", pytrace=False)
        pytest.skip("systemd-analyze missing (apt-get install systemd)")
    return tool


def _unit_settings(path: Path) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _verify(analyze: str, *args: str) -> str:
    res = subprocess.run([analyze, "verify", "--man=no", *args], capture_output=True, text=True, timeout=120)
    out = (res.stdout + res.stderr).strip()
    assert res.returncode == 0 and not out, f"systemd-analyze verify is not clean ({res.returncode}):\n{out}"
    return out


# ------------------------------------------------------------------------- systemd unit


def test_unit_passes_systemd_analyze_verify(tmp_path):
    """systemd-analyze verify reports nothing at all for the unit (in a root holding its executables)."""
    analyze = _systemd_analyze()
    root = tmp_path / "root"
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "usr/bin").mkdir()
    shutil.copy2(shutil.which("kill") or "/bin/kill", root / "usr/bin/kill")
    stub = root / "usr/bin/minerwatch"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy2(UNIT, root / "etc/systemd/system/minerwatch.service")
    _verify(analyze, f"--root={root}", str(UNIT))


def test_unit_exposure_score_stays_low():
    """systemd-analyze security rates the unit at or below 4.0 (it was 3.2 when written)."""
    analyze = _systemd_analyze()
    res = subprocess.run([analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
                         capture_output=True, text=True, timeout=120)
    match = re.search(r"Overall exposure level for minerwatch\.service: (\d+\.\d+)", res.stdout + res.stderr)
    assert match, res.stdout + res.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, res.stdout


def test_unit_is_a_hardened_notify_daemon():
    """The unit runs the daemon as Type=notify with the watchdog, the hardening asked for and only the needed capabilities."""
    s = _unit_settings(UNIT)
    expected = {
        "Type": "notify", "NotifyAccess": "main", "ExecStart": "/usr/bin/minerwatch run",
        "ExecReload": "/bin/kill -HUP $MAINPID", "WatchdogSec": "30", "Restart": "always",
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "read-only",
        "StateDirectory": "minerwatch", "StateDirectoryMode": "0700", "LogsDirectory": "minerwatch",
        "LogsDirectoryMode": "0750", "SystemCallArchitectures": "native", "UMask": "0077",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK", "ProtectKernelModules": "yes",
        "PrivateTmp": "no", "PrivateNetwork": "no", "ProtectControlGroups": "no",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], f"{key}: {s.get(key)}"
    for key in ("MemoryMax", "CPUQuota", "Nice", "SystemCallFilter"):
        assert s.get(key), f"{key} missing"
    assert "@system-service" in s["SystemCallFilter"]
    assert {"/var/lib/minerwatch", "/var/log/minerwatch"} <= set(s["ReadWritePaths"][0].split())
    assert set(s["CapabilityBoundingSet"][0].split()) == CAPS
    text = UNIT.read_text()
    for cap in CAPS:
        assert re.search(rf"^#\s+{cap}\s+\S", text, re.M), f"{cap} has no comment saying why"


# ------------------------------------------------------------------- configs and DaemonSet


def _daemonset_config() -> str:
    lines = (REPO / "packaging/kubernetes/daemonset.yaml").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.strip() == "config.toml: |") + 1
    block = []
    for ln in lines[start:]:
        if ln.strip() and not ln.startswith("    "):
            break
        block.append(ln[4:])
    return "\n".join(block)


def test_shipped_configs_are_valid():
    """The .deb's conffile (all defaults), the image's config and the DaemonSet's ConfigMap load without error."""
    deb_cfg = config.load(REPO / "packaging/deb/config.toml")
    assert deb_cfg == config.Config(source=deb_cfg.source)
    image_cfg = config.load(REPO / "packaging/container/config.toml")
    assert image_cfg.agent.proc_root == "/host/proc"
    ds_cfg = config.from_dict(tomllib.loads(_daemonset_config()), "daemonset.yaml")
    assert ds_cfg.agent.proc_root == "/host/proc"


def test_daemonset_shares_host_namespaces_and_grants_the_units_capabilities():
    """The DaemonSet uses the host PID and network namespaces, host /proc read-only, tolerations, limits and the unit's capabilities."""
    text = (REPO / "packaging/kubernetes/daemonset.yaml").read_text()
    for needle in ("hostPID: true", "hostNetwork: true", "tolerations:", "limits:", "readOnlyRootFilesystem: true",
                   "{name: host-proc, mountPath: /host/proc, readOnly: true}", "hostPath: {path: /proc",
                   "{name: docker-data, mountPath: /var/lib/docker, readOnly: true}", 'drop: ["ALL"]'):
        assert needle in text, needle
    added = re.search(r"add: \[([^\]]*)\]", text).group(1)
    assert {"CAP_" + c.strip().strip('"') for c in added.split(",")} == CAPS


# -------------------------------------------------------------------------- the builds


@pytest.fixture(scope="session")
def dist() -> packaging_build.Dist:
    return packaging_build.build_dist()


@BUILD
def test_frozen_builds_use_the_signatures_inside_them(dist, tmp_path):
    """Both PyInstaller builds run `version` with a clean environment and load the bundle shipped inside them."""
    env = {"PATH": "/usr/bin:/bin"}
    one = subprocess.run([dist.onefile, "version"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert one.returncode == 0, one.stderr
    assert f"minerwatch {__version__}" in one.stdout
    assert re.search(r"\(/tmp/_MEI[^/]*/minerwatch_signatures\)", one.stdout), one.stdout
    d = subprocess.run([dist.onedir / "minerwatch", "version"], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=120)
    assert d.returncode == 0, d.stderr
    assert f"({dist.onedir / '_internal' / 'minerwatch_signatures'})" in d.stdout


@BUILD
def test_frozen_builds_run_the_memory_scan_helper_and_match_with_it(dist, tmp_path, spawn):
    """The memory-scan helper of a frozen build is ``minerwatch __memread`` (there is no python to run
    memread.py with): it reads a live process's memory and matches the rules given on stdin there."""
    import yara

    from agent.collectors import memread
    from agent.signatures import YARA_MEMORY_EXTERNAL

    marker = "mw-frozen-helper-" + "x" * 8
    holder = spawn([sys.executable, "-c", f"import time; s = bytearray(b'{marker}') * 4; time.sleep(120)"])
    rules = yara.compile(source=f'rule MarkerInMemory {{ strings: $a = "{marker}" condition: $a }}',
                         externals={YARA_MEMORY_EXTERNAL: False})
    saved = io.BytesIO()
    rules.save(file=saved)
    limits = memread.MemoryLimits()
    for exe in (dist.onefile, dist.onedir / "minerwatch"):
        out = subprocess.run([exe, memread.FROZEN_COMMAND, "/proc", str(holder.pid), str(limits.region_bytes),
                              str(limits.head_bytes), str(limits.total_bytes), ",".join(limits.unsafe_fs),
                              "--yara", "/nonexistent", YARA_MEMORY_EXTERNAL, "20"],
                             input=saved.getvalue(), capture_output=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr.decode(errors="replace")
        lines = out.stdout.split(b"\n")
        assert json.loads(lines[0])["regions"] > 0
        assert [m["rule"] for m in json.loads(lines[1])] == ["MarkerInMemory"], exe


# ------------------------------------------------------------------------------ the .deb


@pytest.fixture(scope="session")
def deb(dist) -> Path:
    return packaging_build.build_deb(dist)


def _package_paths(deb: Path) -> list[str]:
    out = subprocess.run(["dpkg-deb", "--fsys-tarfile", deb], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(out)) as tar:
        return sorted("/" + m.name.lstrip("./") for m in tar.getmembers() if not m.isdir())


def _running_exes() -> set[str]:
    exes = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            exes.add(os.readlink(f"/proc/{pid}/exe"))
        except OSError:  # kernel threads, vanished processes, no permission: not ours anyway
            continue
    return exes


@BUILD
def test_deb_installs_enabled_not_started_removes_to_conffiles_and_purges(deb):
    """dpkg -i installs and enables without starting; dpkg -r leaves only the conffiles; dpkg -P removes them too."""
    conffiles = ["/etc/logrotate.d/minerwatch", "/etc/minerwatch/config.toml"]
    wants = Path("/etc/systemd/system/multi-user.target.wants/minerwatch.service")
    with dpkg_install.exclusive("minerwatch"):
        paths = _package_paths(deb)
        assert set(conffiles) <= set(paths)
        dpkg_install.dpkg("-i", str(deb))
        assert dpkg_install.status("minerwatch") == "install ok installed"
        out = subprocess.run(["/usr/bin/minerwatch", "version"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "(/usr/lib/minerwatch/_internal/minerwatch_signatures)" in out.stdout, out
        assert stat.S_IMODE(os.stat("/var/lib/minerwatch").st_mode) == 0o700
        assert stat.S_IMODE(os.stat("/var/log/minerwatch").st_mode) == 0o750
        if shutil.which("deb-systemd-helper") or shutil.which("systemctl"):
            assert wants.is_symlink(), "the service is not enabled"
        assert "/usr/lib/minerwatch/minerwatch" not in _running_exes(), "installing started the daemon"
        if shutil.which("systemd-analyze"):
            _verify("systemd-analyze", "/lib/systemd/system/minerwatch.service")

        dpkg_install.dpkg("-r", "minerwatch")
        assert dpkg_install.status("minerwatch") == "deinstall ok config-files"
        assert [p for p in paths if os.path.lexists(p)] == conffiles
        for gone in ("/var/lib/minerwatch", "/var/log/minerwatch", wants):
            assert not os.path.lexists(gone), f"{gone} left after dpkg -r"

        dpkg_install.dpkg("-P", "minerwatch")
        assert dpkg_install.status("minerwatch") == ""
        assert [p for p in paths if os.path.lexists(p)] == []
        assert not os.path.lexists("/etc/minerwatch")


# --------------------------------------------------------------------- the container image


@pytest.fixture(scope="session")
def agent_image(docker_client, dist) -> str:
    return packaging_build.build_image(docker_client, dist)


def _run_to_end(docker_run, image: str, cmd: list[str], **kw) -> tuple[int, str, str]:
    c = docker_run(image, cmd, name_prefix="mwtest-agent", **kw)
    code = c.wait(timeout=240)["StatusCode"]
    return code, c.logs(stdout=True, stderr=False).decode(), c.logs(stdout=False, stderr=True).decode()


@BUILD
def test_image_holds_no_python_and_runs_version_signatures_and_sweep(docker_client, agent_image, dist, docker_run):
    """The image has no Python and every library ldd asks for; version, signatures check and sweep --json run in it."""
    files = {"/" + name.lstrip("./") for name in _image_files(docker_client, agent_image)}
    assert not [f for f in files if "python" in f.lower() or f.endswith((".py", ".pyc"))]
    assert set(packaging_build.system_libs(dist)) <= files
    code, out, err = _run_to_end(docker_run, agent_image, ["version"])
    assert code == 0 and f"minerwatch {__version__}" in out, err
    code, out, err = _run_to_end(docker_run, agent_image, ["signatures", "check"])
    assert code == 0, out + err
    # The image's config reads the host's processes from /host/proc (here without the host's
    # PID namespace or Docker: what it finds there does not matter, only that it reports).
    code, out, err = _run_to_end(docker_run, agent_image, ["sweep", "--json"],
                                 volumes={"/proc": {"bind": "/host/proc", "mode": "ro"}})
    assert code in (0, 1), err
    for alert in json.loads(out):
        alerts_schema.validate(alert)


def _image_files(client, image: str) -> list[str]:
    c = client.containers.create(image)
    try:
        data = b"".join(c.export())
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return [m.name for m in tar.getmembers() if not m.isdir()]
    finally:
        c.remove(force=True)


@BUILD
def test_image_with_host_proc_and_docker_socket_detects_a_miner_container(agent_image, miner_in_container, docker_run):
    """The agent image, given the host's /proc at /host/proc and the Docker socket, reports the miner container next to it."""
    docker_host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not docker_host.startswith("unix://"):
        pytest.skip(f"the agent container needs a Docker unix socket, not {docker_host}")
    sock = docker_host[len("unix://"):]
    m = miner_in_container
    code, out, err = _run_to_end(
        docker_run, agent_image, ["sweep", "--json", "--config", "/etc/minerwatch/config.toml"],
        network="host", pid_mode="host", cap_drop=["ALL"], cap_add=[c[4:] for c in sorted(CAPS)],
        volumes={"/proc": {"bind": "/host/proc", "mode": "ro"}, sock: {"bind": "/var/run/docker.sock", "mode": "rw"}},
    )
    assert code == 1, f"exit {code}\n{err}"
    alerts = [alerts_schema.validate(a) for a in json.loads(out)]
    ours = [a for a in alerts if a.get("container", {}).get("id") == m.id]
    assert ours, f"no alert for container {m.id[:12]}: {[a.get('container') for a in alerts]}\n{err}"
    assert ours[0]["container"]["name"] == m.name
    assert ours[0]["process"]["pid"] == m.pid


# ------------------------------------------------------------------ man page and completions


def _leaf_commands(cmd, path):
    import click

    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _leaf_commands(sub, path + [name])
    else:
        yield " ".join(path)


def test_man_page_is_generated_from_the_cli_and_renders_without_warnings(tmp_path):
    """packaging/man/mkman.py writes a page with every (sub)command and option of the CLI; groff reads it
    with every warning on and says nothing."""
    from agent.cli.main import cli

    page = tmp_path / "minerwatch.1"
    run = subprocess.run([sys.executable, str(REPO / "packaging/man/mkman.py"), str(page)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    text = page.read_text()
    assert text.startswith(".TH MINERWATCH 1 ") and f'"minerwatch {__version__}"' in text
    for leaf in _leaf_commands(cli, ["minerwatch"]):
        assert f"\n.SS {leaf.replace('-', chr(92) + '-')}\n" in text, leaf
    for option in ("\\-\\-min\\-severity", "\\-\\-force", "\\-\\-quiet", "\\-\\-respond"):
        assert option in text, option
    groff = shutil.which("groff")
    if groff:
        check = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True,
                               timeout=60)
        assert check.returncode == 0 and not check.stderr, check.stderr


def test_bash_completion_completes_commands_and_options(tmp_path):
    """The bash completion the .deb installs (click's, generated by the CLI) completes real words in a real bash."""
    env = {**os.environ, "_MINERWATCH_COMPLETE": "bash_source"}
    script = subprocess.run([sys.executable, "-m", "agent"], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=60)
    assert script.returncode == 0 and "complete " in script.stdout, script.stderr
    (tmp_path / "completion.bash").write_text(script.stdout)
    probe = ('source "$1"\n'
             'COMP_WORDS=(minerwatch con); COMP_CWORD=1; _minerwatch_completion minerwatch; echo "1:${COMPREPLY[*]}"\n'
             'COMPREPLY=(); COMP_WORDS=(minerwatch release --f); COMP_CWORD=2; _minerwatch_completion minerwatch; echo "2:${COMPREPLY[*]}"\n')
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"  # the venv's minerwatch
    run = subprocess.run(["bash", "-c", probe, "probe", str(tmp_path / "completion.bash")], capture_output=True,
                         text=True, env={**os.environ, "PATH": path}, cwd=REPO, timeout=60)
    assert "1:config" in run.stdout, run.stdout + run.stderr
    assert "2:--force" in run.stdout, run.stdout + run.stderr


@BUILD
def test_deb_ships_man_page_completions_and_the_generated_config(deb, tmp_path):
    """The .deb installs minerwatch(1), bash and zsh completions, and `config defaults` as its conffile."""
    paths = _package_paths(deb)
    for wanted in ("/usr/share/man/man1/minerwatch.1.gz", "/usr/share/bash-completion/completions/minerwatch",
                   "/usr/share/zsh/vendor-completions/_minerwatch", "/etc/minerwatch/config.toml"):
        assert wanted in paths, wanted
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)], check=True, timeout=120)
    assert (tmp_path / "etc/minerwatch/config.toml").read_text() == config.render_defaults()
    assert "_minerwatch_completion" in (tmp_path / "usr/share/bash-completion/completions/minerwatch").read_text()
    assert "#compdef minerwatch" in (tmp_path / "usr/share/zsh/vendor-completions/_minerwatch").read_text()
    import gzip

    assert gzip.decompress((tmp_path / "usr/share/man/man1/minerwatch.1.gz").read_bytes()).startswith(b".TH MINERWATCH 1")
