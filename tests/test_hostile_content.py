"""Hostile container content under the real daemon and a sweep: nothing outside the container read or written, no hang, no crash.

Four containers, each one incident (an incident is one container, so each gets its own):
  layer  symlinks to host files (/etc/shadow, /proc/1/root/etc/shadow, a canary, relative and
         dangling ones), a FIFO named like a binary, a 20 GiB sparse ELF, a miner copy whose
         name holds a newline and invalid UTF-8;
  cwd    a miner whose working directory holds config.json & co as symlinks to host files;
  deep   a miner whose config.json is 1 MiB of '[' (nested as deep as a config can be);
  argv   a shell with a 1 MiB command line (8192 args) whose only evidence is at the very end.
OpenSpy (inotify IN_OPEN/IN_ACCESS) watches the host canary the symlinks point at (directly,
relatively, and through /proc/1/root: from the host that is the canary itself) for the whole
test. Symlinks to the real /etc/shadow are there too, but it is not spied on: other sessions on
a shared host may legitimately open it.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from tests.agentproc import AgentProcess
from tests.alerts_schema import validate
from tests.helpers.containers import TEST_WALLET, wait_for_process
from tests.helpers.openspy import OpenSpy
from tests.sweeping import REPO

PAD_ARGS = 8192  # x 128 bytes = 1 MiB of command line
POOL = "fakepool 3333 & sleep 0.3; "
MINER = f"-o stratum+tcp://127.0.0.1:3333 -u {TEST_WALLET} -t 0 --seconds 300"


def layer_script(canary: str, dangling: str) -> str:
    return (f"ln -s /etc/shadow /tmp/shadow; ln -s /proc/1/root/etc/shadow /tmp/p1-shadow; "
            f"ln -s /proc/1/root{canary} /tmp/p1-canary; "
            f"ln -s {canary} /tmp/canary; ln -s ../../../../../../../../../../..{canary} /tmp/canary-rel; "
            f"mkdir -p /tmp/.x; ln -s {canary} /tmp/.x/xmrig; ln -s {dangling} /tmp/drop; "
            "mkfifo /tmp/xmrig; chmod 755 /tmp/xmrig; mkfifo /tmp/.x/config.json; "
            "printf '\\177ELF' > /tmp/huge.bin; truncate -s 20G /tmp/huge.bin; chmod 755 /tmp/huge.bin; "
            "touch \"/tmp/$(printf 'new\\nline')\"; "
            "cp /usr/local/bin/fakeminer \"/tmp/$(printf 'x\\nm\\377\\376')\"; exec sleep 300")


def cwd_script(canary: str) -> str:
    return (f"mkdir -p /app; ln -s {canary} /app/config.json; ln -s /etc/shadow /app/xmrig.json; "
            f"ln -s /proc/1/root{canary} /app/.xmrig.json; ln -s ../../../..{canary} /app/config.jsonc; "
            f"{POOL}cd /app; exec fakeminer {MINER} --name \"$(printf 'kw)\\nx')\"")


DEEP_SCRIPT = ("mkdir -p /deep; head -c 1048576 /dev/zero | tr '\\0' '[' > /deep/config.json; "
               f"{POOL}cd /deep; exec fakeminer-plain {MINER}")


def rchar(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def of(container):
    return lambda a: a.get("container", {}).get("id") == container.id


def test_hostile_container_content_is_never_followed_out(tmp_path, docker_run, base_image, helper_bins):
    """Symlinks out, FIFO, 20 GiB sparse file, bad names, 1 MiB argv, linked and 1 MiB-deep configs: contained, alerted, valid."""
    host = tmp_path / "host"
    host.mkdir()
    canary = host / "shadow-canary"
    canary.write_text("root:$6$canary$...:19000:0:99999:7:::\n")
    dangling = host / "created-by-agent"
    digest = hashlib.sha256(helper_bins.fakeminer.read_bytes()).hexdigest()
    agent = AgentProcess(tmp_path / "agent", interval=2.0).start()
    read_before = rchar(agent.proc.pid)
    with OpenSpy(canary) as spy:
        started = time.monotonic()
        layer = docker_run(base_image, ["sh", "-c", layer_script(str(canary), str(dangling))], name_prefix="mwtest-hostile-layer")
        cwd = docker_run(base_image, ["sh", "-c", cwd_script(str(canary))], name_prefix="mwtest-hostile-cwd")
        deep = docker_run(base_image, ["sh", "-c", DEEP_SCRIPT], name_prefix="mwtest-hostile-deep")
        argv = docker_run(base_image, ["sh", "-c", "sleep 300; :", "sh", *["0" * 127] * PAD_ARGS,
                                       "-o", "stratum+tcp://127.0.0.1:3333", "-u", TEST_WALLET],
                          name_prefix="mwtest-hostile-argv")
        file_alert = agent.wait_alert(lambda a: of(layer)(a) and a.get("file", {}).get("hash", {}).get("sha256") == digest,
                                      90, "alert for the miner copy with a hostile name")
        cwd_alert = agent.wait_alert(of(cwd), 90, "alert for the miner with linked configs")
        deep_alert = agent.wait_alert(of(deep), 90, "alert for the miner with a 1 MiB-deep config")
        argv_alert = agent.wait_alert(of(argv), 90, "alert for the 1 MiB command line")
        alerted = time.monotonic() - started

        sweep_started = time.monotonic()
        sweep = subprocess.run([sys.executable, "-m", "agent", "sweep", "--json", "--config", str(agent.config_path)],
                               cwd=REPO, capture_output=True, timeout=240, check=False)
        sweep_s = time.monotonic() - sweep_started
        assert sweep.returncode == 1, sweep.stderr.decode(errors="replace")[-3000:]
        found = [validate(a) for a in json.loads(sweep.stdout)]

        later = docker_run(base_image, ["sh", "-c", f"{POOL}exec fakeminer {MINER}"], name_prefix="mwtest-hostile-after")
        agent.wait_alert(of(later), 30, "alert for a plain miner started after the hostile ones (the worker is not stuck)")
        time.sleep(2)
        assert not spy.opened(), "the agent or the sweep opened the host canary through a container symlink"
    read = rchar(agent.proc.pid) - read_before
    assert not dangling.exists(), "something wrote through a dangling container symlink onto the host"
    assert read < 2 << 30, f"the agent read {read >> 20} MiB: it must never read the 20 GiB sparse file"

    assert file_alert["file"]["path"].startswith("/tmp/x\nm") and "\\x" in file_alert["file"]["path"]
    assert cwd_alert["minerwatch"]["severity"] == "critical"
    assert not any(e["signal"] == "config" for e in cwd_alert["minerwatch"]["evidence"]), cwd_alert["minerwatch"]["evidence"]
    assert deep_alert["process"]["pid"] == wait_for_process(deep, "fakeminer-plain")
    assert "stratum+tcp://127.0.0.1:3333" in argv_alert["process"]["command_line"]
    assert len(argv_alert["process"]["command_line"]) < 80_000, "the command line is capped, head and tail kept"
    assert argv_alert["process"]["command_line"].startswith("sh -c sleep 300; : sh 000")
    swept = {a.get("container", {}).get("id") for a in found}
    names = {cwd.id: "cwd", deep.id: "deep", argv.id: "argv"}  # the sweep reads processes, not container layers
    assert set(names) <= swept, f"the sweep missed {[n for c, n in names.items() if c not in swept]}"

    events = agent.log_events()
    bad = [e for e in events if e.get("event") in ("worker_error", "worker_stalled", "initial_scan_failed")]
    assert not bad, bad[:3]
    alerts = agent.alerts()  # every line schema-valid (alerts() validates)
    assert agent.proc.poll() is None
    assert agent.stop() == 0, agent.log()[-2000:]
    print(f"\nHOSTILE: 4 hostile containers alerted within {alerted:.1f} s; sweep {sweep_s:.1f} s "
          f"({len(found)} findings); agent read {read / (1 << 20):.1f} MiB in all; {len(alerts)} alerts, all schema-valid; "
          f"the host canary never opened")
