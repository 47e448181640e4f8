"""Benign look-alikes never reach medium (issue 13): a busy process holding our miner rules (text and compiled)
in memory, a payments container with wallet-named variables, a tunnel client with ``--url 127.0.0.1:PORT``,
and a program whose ``--config`` has a ``pools`` list of database connections, connected to that port. All
real, all at once, watched by a real daemon for 90 s (alerts from ``low`` up, so what it judged is seen);
the fake miner, its strings in its code, is still critical in the same daemon."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


from tests.helpers import procs
from tests.helpers.pool import FakePool

RANK = {"low": 1, "medium": 2, "high": 3, "critical": 4}
SIGNATURES = Path(__file__).resolve().parents[1] / "signatures" / "yara"
WATCH_S = 90.0

HOLDER = """
import io, sys, time, yara
paths = sys.argv[1:]
texts = [open(p).read() for p in paths]
rules = yara.compile(filepaths={str(i): p for i, p in enumerate(paths)}, externals={"mw_memory_scan": False})
buf = io.BytesIO()
rules.save(file=buf)
held = [texts, [t.encode() for t in texts], buf.getvalue()]   # rule text and compiled rules, in memory
print("ready", flush=True)
end, n = time.monotonic() + 200, 0
while time.monotonic() < end:                                 # busy: a memory-scan candidate
    n += 1
"""

# A tunnel client and a connection-pool service: Python programs frozen under their own names, as
# PyInstaller-style apps are (the executable is not called python, so its --config is a config).
CLIENT = """
import socket, sys, time
url = sys.argv[sys.argv.index("--url") + 1] if "--url" in sys.argv else None
if url is None:
    import json
    url = json.load(open(sys.argv[sys.argv.index("--config") + 1]))["pools"][0]["url"]
host, port = url.rsplit(":", 1)
s = socket.create_connection((host, int(port)))
print("ready", flush=True)
time.sleep(200)
"""


def _listener() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        srv.bind(("127.0.0.1", 8080))
    except OSError:  # 8080 taken on this host: any port shows the same
        srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    accepted = []

    def accept() -> None:
        try:
            for _ in range(4):
                accepted.append(srv.accept())
        except OSError:  # the test closed the listener: nothing more to accept
            pass

    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1]


def _frozen(tmp_path: Path, name: str) -> Path:
    """A copy of the Python interpreter under another name (what a frozen app's executable is)."""
    exe = tmp_path / name
    shutil.copy2(Path(sys.executable).resolve(), exe)
    return exe


def _start(spawn, args, **kw) -> subprocess.Popen:
    p = spawn(args, stdout=subprocess.PIPE, text=True, **kw)
    assert p.stdout.readline().strip() == "ready", f"{args} did not start"
    return p


def test_benign_look_alikes_stay_below_medium_for_90s(agent, tmp_path, spawn, docker_run, base_image, helper_bins):
    srv, port = _listener()
    try:
        rules = sorted(str(p) for p in SIGNATURES.glob("*.yar"))
        holder = _start(spawn, [sys.executable, "-c", HOLDER, *rules])
        client = tmp_path / "client.py"
        client.write_text(CLIENT)
        tunnel = _start(spawn, [str(_frozen(tmp_path, "tunnel-client")), str(client), "--url", f"127.0.0.1:{port}"])
        pools = tmp_path / "pools.json"
        pools.write_text(json.dumps({"pools": [{"url": f"127.0.0.1:{port}", "user": "orders", "pass": "s3cret"},
                                               {"url": "10.0.0.12:5432", "user": "reports", "pass": "x"}],
                                     "max_connections": 20}))
        dbpool = _start(spawn, [str(_frozen(tmp_path, "dbpoold")), str(client), "--config", str(pools)], cwd=tmp_path)
        payments = docker_run(base_image, ["sh", "-c", "while :; do sleep 1; done"], name_prefix="mwtest-payments",
                              environment={"WALLET_ADDRESS": "0x52908400098527886E0F7030069857D2E4169EE7",
                                           "WALLET_PROVIDER": "stripe", "WALLET_WEBHOOK_URL": "https://pay.example/h"})
        benign = {holder.pid: "rules holder", tunnel.pid: "tunnel client", dbpool.pid: "db pool"}
        for pid in (tunnel.pid, dbpool.pid):
            procs.wait_until(lambda pid=pid: procs.established_to(pid, port), 10, message=f"{pid} connected")

        with FakePool() as pool:  # the control: a real miner in the same daemon is still critical
            miner = spawn([str(helper_bins.fakeminer), "-o", pool.url, "-t", "1", "--seconds", "60"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            agent.wait_alert(lambda a: a.get("process", {}).get("pid") == miner.pid
                             and a["minerwatch"]["severity"] == "critical", 30.0, "critical alert for the miner")
            miner.kill()

        def loud(a: dict) -> bool:
            mine = a.get("process", {}).get("pid") in benign or a.get("container", {}).get("id") == payments.id
            return mine and RANK[a["minerwatch"]["severity"]] >= RANK["medium"]

        deadline = time.monotonic() + WATCH_S
        while time.monotonic() < deadline:
            bad = [a for a in agent.alerts() if loud(a)]
            assert not bad, json.dumps(bad)[:3000]
            assert all(p.poll() is None for p in (holder, tunnel, dbpool)), "a benign workload died"
            time.sleep(1.0)
        # It did look: the holder's memory was scanned (a weak, low memory hit), the others were judged.
        low = [a for a in agent.alerts() if a.get("process", {}).get("pid") == holder.pid]
        assert any(e["signal"] == "yara" and "memory" in e["detail"] for a in low for e in a["minerwatch"]["evidence"]), \
            f"the rules holder was never memory-scanned: {json.dumps(low)[:2000]}\n{agent.log()[-2000:]}"
    finally:
        srv.close()
