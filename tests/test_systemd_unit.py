"""The shipped unit (systemd/minerwatch.service) under a real systemd as PID 1.

A Debian 12 container built offline (tests/helpers/debian_image.py) boots systemd 252; the
checkout's agent runs inside it from the host's Python and venv, mounted read-only at their own
paths, through a two-line /usr/bin/minerwatch. The unit file is bound read-only from the
checkout as it ships: no drop-in, nothing weakened. Every directive takes effect in this
container (test_start_shows_status_and_the_sandbox_is_in_force checks them on the running
daemon); the one value the container bounds is LimitNOFILE=65536: it cannot exceed the
container's hard limit without CAP_SYS_RESOURCE, and systemd then applies the closest value. The signature bundle is a root-owned
copy in /usr/share/minerwatch/signatures (named in /etc/minerwatch/config.toml), as the .deb
has it, so the trust checks of `minerwatch run` hold whoever owns the checkout.

One container for the module; each test starts from a stopped unit with the good config.
"""
from __future__ import annotations

import json
import re
import time

import pytest

from tests.helpers import debian_image
from tests.helpers.containers import REPO_ROOT



def wait_for(what, fn, timeout=30.0, every=0.25):
    return debian_image.wait_for(what, fn, timeout, every)

UNIT = "minerwatch"
UNIT_PATH = "/etc/systemd/system/minerwatch.service"
ALERTS = "/var/log/minerwatch/alerts.jsonl"
CONFIG = "/etc/minerwatch/config.toml"
SIGNATURES = "/usr/share/minerwatch/signatures"
GOOD_CONFIG = f'[agent]\nsignatures = "{SIGNATURES}"\n'.encode()
# A stray stopper with a name of its own (dash's kill is a builtin: the sender is this script,
# which stays alive long enough for the agent to read its name).
STRAY_KILL = b'#!/bin/sh\nkill -TERM "$1"\nsleep 3\n'
# CapBnd of CAP_DAC_READ_SEARCH (2), CAP_KILL (5), CAP_NET_ADMIN (12), CAP_SYS_PTRACE (19)
UNIT_CAPS = (1 << 2) | (1 << 5) | (1 << 12) | (1 << 19)


@pytest.fixture(scope="module")
def image(docker_client, request):
    return debian_image.image_for_tests(docker_client, request).tag


@pytest.fixture(scope="module")
def box(docker_client, image):
    """A booted systemd container with the agent installed (module-wide, removed at the end)."""
    unit_bind = {str(REPO_ROOT / "systemd/minerwatch.service"): {"bind": UNIT_PATH, "mode": "ro"}}
    with debian_image.systemd_container(docker_client, image, volumes=unit_bind) as c:
        wait_for("systemd's private bus", lambda: sh(c, "test", "-S", "/run/systemd/private")[0] == 0, timeout=30)
        rc, out = sh(c, "systemctl", "is-system-running", "--wait")
        assert out.strip() == "running", f"systemd did not boot cleanly ({out.strip()}):\n" + sh(
            c, "systemctl", "--failed", "--no-pager")[1] + sh(c, "journalctl", "-b", "--no-pager", "-n", "60")[1]
        files = {"/usr/bin/minerwatch": (debian_image.wrapper_script(), 0o755),
                 "/usr/local/bin/mw-stray-kill": (STRAY_KILL, 0o755),
                 CONFIG: (GOOD_CONFIG, 0o644)}
        files.update(debian_image.tree_files(REPO_ROOT / "signatures", SIGNATURES))
        debian_image.put_files(c, files)
        sh(c, "systemctl", "daemon-reload", check=True)
        yield c


def sh(c, *argv, check=False):
    return debian_image.run(c, *argv, check=check)


def show(c, *props) -> dict[str, str]:
    args = ["systemctl", "show", UNIT]
    for p in props:
        args += ["-p", p]
    out = sh(c, *args, check=True)[1]
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)




def alerts(c) -> list[dict]:
    rc, out = sh(c, "cat", ALERTS)
    return [json.loads(line) for line in out.splitlines() if line.strip()] if rc == 0 else []


def alerts_named(c, rule: str) -> list[dict]:
    return [a for a in alerts(c) if a["rule"]["name"] == rule]


class Journal:
    """The unit's journal from the moment it was made."""

    def __init__(self, c):
        self.c = c
        out = sh(c, "journalctl", "-n", "0", "--show-cursor", "-q", "--no-pager")[1]
        m = re.search(r"-- cursor: (\S+)", out)
        self.cursor = m.group(1) if m else None

    def text(self) -> str:
        args = ["journalctl", "-u", UNIT, "--no-pager", "-o", "cat"]
        if self.cursor:
            args.append(f"--after-cursor={self.cursor}")
        return sh(self.c, *args)[1]

    def wait_for(self, needle: str, timeout: float = 20.0) -> str:
        return wait_for(f"{needle!r} in the journal", lambda: self.text() if needle in self.text() else None, timeout)


@pytest.fixture
def unit(box):
    """A stopped, not failed unit with the good config and no alert file."""
    sh(box, "systemctl", "stop", UNIT)
    sh(box, "systemctl", "reset-failed", UNIT)
    debian_image.put_files(box, {CONFIG: (GOOD_CONFIG, 0o644)})
    sh(box, "rm", "-f", ALERTS)
    yield box
    sh(box, "systemctl", "stop", UNIT)


def start(c) -> str:
    rc, out = sh(c, "systemctl", "start", UNIT)
    assert rc == 0, out + sh(c, "journalctl", "-u", UNIT, "--no-pager", "-n", "30")[1]
    props = show(c, "ActiveState", "SubState", "MainPID")
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), props
    return props["MainPID"]


def wait_restarted(c, old_pid: str, timeout: float = 30) -> dict[str, str]:
    def restarted():
        p = show(c, "ActiveState", "SubState", "MainPID", "NRestarts")
        return p if p["ActiveState"] == "active" and p["MainPID"] not in ("0", old_pid) else None

    return wait_for("the restart", restarted, timeout)


def proc_status(c, pid: str) -> dict[str, str]:
    out = sh(c, "cat", f"/proc/{pid}/status", check=True)[1]
    return dict((k, v.strip()) for k, _, v in (line.partition(":") for line in out.splitlines()))


def mounts(c, pid: str) -> dict[str, str]:
    """mount point -> its options, as the process sees them (the last mount on a point wins)."""
    out = sh(c, "cat", f"/proc/{pid}/mountinfo", check=True)[1]
    return {f[4]: f[5] for f in (line.split() for line in out.splitlines())}


def nofile_hard(c, pid: str) -> int:
    out = sh(c, "cat", f"/proc/{pid}/limits", check=True)[1]
    value = re.search(r"Max open files\s+\S+\s+(\S+)", out).group(1)
    return 1 << 62 if value == "unlimited" else int(value)


def cgroup_file(c, pid: str, controller: str, v1_name: str, v2_name: str) -> str:
    out = sh(c, "cat", f"/proc/{pid}/cgroup", check=True)[1]
    paths = {}
    for line in out.splitlines():
        _, ctrls, path = line.split(":", 2)
        for ctrl in ctrls.split(",") if ctrls else [""]:
            paths[ctrl] = path
    if controller in paths and debian_image.cgroup_layout() != "v2":
        return sh(c, "cat", f"/sys/fs/cgroup/{controller}{paths[controller]}/{v1_name}", check=True)[1].strip()
    return sh(c, "cat", f"/sys/fs/cgroup{paths['']}/{v2_name}", check=True)[1].strip()


# ---------------------------------------------------------------------------------- tests


def test_start_shows_status_and_the_sandbox_is_in_force(unit):
    """`systemctl start` -> active; `systemctl status` shows the agent's STATUS= line; and the
    unit's sandbox is really applied to the daemon (not merely accepted by systemd)."""
    c = unit
    rc, out = sh(c, "systemd-analyze", "verify", UNIT_PATH)
    assert rc == 0 and not out.strip(), out
    pid = start(c)
    status = sh(c, "systemctl", "status", UNIT, "--no-pager", "-l")[1]
    assert re.search(r'Status: "watching \d+ processes, \d+ containers; no docker \(process-only\); '
                     r'polling \(no proc connector\); signatures \S+', status), status
    assert f"Main PID: {pid}" in status

    st = proc_status(c, pid)
    assert int(st["CapBnd"], 16) == UNIT_CAPS and int(st["CapEff"], 16) == UNIT_CAPS, st
    assert st["NoNewPrivs"] == "1" and st["Seccomp"] == "2", st  # NoNewPrivileges, SystemCallFilter=
    mnt = mounts(c, pid)
    opts = lambda path: mnt[path].split(",")  # noqa: E731
    assert "ro" in opts("/"), mnt["/"]                                  # ProtectSystem=strict
    assert "ro" in opts("/proc/sys") and "ro" in opts("/sys")           # ProtectKernelTunables=
    assert "rw" in opts("/var/lib/minerwatch") and "rw" in opts("/var/log/minerwatch")
    assert "rw" in opts("/sys/fs/cgroup")                               # ReadWritePaths= (freezer)
    assert sh(c, "stat", "-c", "%a", "/var/lib/minerwatch", "/var/log/minerwatch")[1].split() == ["700", "750"]
    # LimitNOFILE=65536, or as close as the container allows: raising a hard limit takes
    # CAP_SYS_RESOURCE, which these containers lack (and dockerd too on some CI hosts, where
    # its hard limit caps every container's); systemd then applies the closest value.
    ceiling = nofile_hard(c, "1")
    limits = sh(c, "cat", f"/proc/{pid}/limits", check=True)[1]
    want = min(65536, ceiling)
    assert re.search(rf"Max open files\s+{want}\s+{want}", limits), (ceiling, limits)
    stat = sh(c, "cat", f"/proc/{pid}/stat", check=True)[1]
    assert stat.rsplit(")", 1)[1].split()[16] == "5"                    # Nice=5
    assert cgroup_file(c, pid, "memory", "memory.limit_in_bytes", "memory.max") == str(512 << 20)  # MemoryMax=
    quota = cgroup_file(c, pid, "cpu", "cpu.cfs_quota_us", "cpu.max")   # CPUQuota=50%
    assert quota.split()[0] == "50000", quota
    score = sh(c, "systemd-analyze", "security", UNIT, "--no-pager")[1]
    m = re.search(r"Overall exposure level for minerwatch.service: (\d+\.\d+)", score)
    assert m and float(m.group(1)) <= 4.0, score[-500:]
    started = wait_for("the agent-started alert", lambda: alerts_named(c, "minerwatch agent started"))
    assert started[0]["minerwatch"]["evidence"][0]["detail"].startswith("minerwatch started;")


def test_reload_keeps_the_daemon_and_is_logged(unit):
    """`systemctl reload` (ExecReload: SIGHUP) -> the same daemon, still active, the reload in the
    journal; a bad config on reload keeps the last good one and says why in STATUS and the journal."""
    c = unit
    pid = start(c)
    j = Journal(c)
    rc, out = sh(c, "systemctl", "reload", UNIT)
    assert rc == 0, out
    text = j.wait_for("Reloaded minerwatch.service")
    assert "Reloading minerwatch.service" in text
    assert any(json.loads(line).get("event") == "reloaded" for line in text.splitlines() if line.startswith("{"))
    assert show(c, "ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": pid}

    debian_image.put_files(c, {CONFIG: (GOOD_CONFIG + b"colour = 'red'\n", 0o644)})
    j = Journal(c)
    assert sh(c, "systemctl", "reload", UNIT)[0] == 0
    text = j.wait_for('"reload_failed"')
    assert f"{CONFIG}: [agent] colour: unknown key" in text, text
    status = wait_for("the reload failure in STATUS", lambda: show(c, "StatusText")["StatusText"].startswith(
        "reload failed, running on the last good configuration") and show(c, "StatusText"))
    assert "colour" in status["StatusText"]
    assert show(c, "ActiveState", "MainPID") == {"ActiveState": "active", "MainPID": pid}


def test_watchdog_is_pinged_and_restarts_a_stalled_daemon(unit):
    """WatchdogSec=30: the daemon pings while it makes progress; stopped (SIGSTOP) it is killed
    by the watchdog and restarted, and the new run says the last one did not stop cleanly."""
    c = unit
    pid = start(c)
    assert show(c, "WatchdogUSec")["WatchdogUSec"] == "30s"
    first = int(show(c, "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])
    assert first > 0
    wait_for("a second watchdog ping", lambda: int(show(c, "WatchdogTimestampMonotonic")[
        "WatchdogTimestampMonotonic"]) > first, timeout=5)
    j = Journal(c)
    t0 = time.monotonic()
    sh(c, "kill", "-STOP", pid, check=True)  # the agent this test started
    wait_for("the watchdog to fire", lambda: "Watchdog timeout" in j.text(), timeout=45, every=1)
    fired = time.monotonic() - t0
    assert 25 <= fired <= 40, f"the watchdog fired after {fired:.0f} s (WatchdogSec=30)"
    props = wait_restarted(c, pid)
    assert props["NRestarts"] == "1", props
    text = j.text()
    assert "Killing process" in text and "signal SIGABRT" in text and "Failed with result 'watchdog'" in text, text
    restarted = wait_for("the restarted agent's start alert", lambda: [
        a for a in alerts_named(c, "minerwatch agent started") if "never stopped cleanly" in
        a["minerwatch"]["evidence"][0]["detail"]])
    assert restarted[-1]["minerwatch"]["severity"] == "medium"


def test_a_stray_sigterm_is_alerted_and_the_unit_restarts(unit):
    """kill -TERM from outside systemd: the daemon exits 0, Restart=always brings it back (new
    MainPID, NRestarts 1) and an agent-stopping alert names the sender."""
    c = unit
    pid = start(c)
    j = Journal(c)
    sh(c, "mw-stray-kill", pid, check=True)
    props = wait_restarted(c, pid)
    assert props["NRestarts"] == "1", props
    stopping = wait_for("the agent-stopping alert", lambda: alerts_named(c, "minerwatch agent stopping"))
    assert len({a["event"]["id"] for a in stopping}) == len(stopping) == 1, stopping
    detail = stopping[0]["minerwatch"]["evidence"][0]["detail"]
    assert re.search(r"received SIGTERM from PID \d+ \(mw-stray-kill, uid 0\)", detail), detail
    assert "not the service manager" in detail and stopping[0]["minerwatch"]["severity"] == "high"
    text = j.wait_for("Scheduled restart job, restart counter is at 1")
    assert "stop_requested" in text
    again = wait_for("the next start alert", lambda: [a for a in alerts_named(c, "minerwatch agent started")
                                                       if "mw-stray-kill" in a["minerwatch"]["evidence"][0]["detail"]])
    assert "stopped cleanly" in again[0]["minerwatch"]["evidence"][0]["detail"]


def test_stop_makes_it_inactive_with_a_routine_alert(unit):
    c = unit
    start(c)
    rc, out = sh(c, "systemctl", "stop", UNIT)
    assert rc == 0, out
    props = show(c, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert props == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0", "NRestarts": "0"}, props
    (stopping,) = alerts_named(c, "minerwatch agent stopping")
    detail = stopping["minerwatch"]["evidence"][0]["detail"]
    assert "from PID 1 (systemd, uid 0)" in detail and "routine stop" in detail
    assert stopping["minerwatch"]["severity"] == "low"


def test_a_bad_config_leaves_the_unit_failed_with_the_reason(unit):
    """An unknown key: `systemctl start` fails, exit 2 is not restarted (RestartPreventExitStatus=2,
    despite Restart=always) and the journal names the file and the key."""
    c = unit
    debian_image.put_files(c, {CONFIG: (b'[alerts]\nstdout = true\ncolour = "red"\n', 0o644)})
    j = Journal(c)
    rc, out = sh(c, "systemctl", "start", UNIT)
    assert rc != 0, out
    time.sleep(7)  # > RestartSec=5: a restart would have happened by now
    props = show(c, "ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert props == {"ActiveState": "failed", "Result": "exit-code", "ExecMainStatus": "2", "NRestarts": "0"}, props
    text = j.text()
    assert f"{CONFIG}: [alerts] colour: unknown key" in text, text
    assert "status=2/INVALIDARGUMENT" in text and "Scheduled restart job" not in text, text
    status = sh(c, "systemctl", "status", UNIT, "--no-pager", "-l")[1]
    assert "Active: failed" in status and "colour: unknown key" in status, status
