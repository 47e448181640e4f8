"""Regenerate the live part of the fuzz seed corpus from this host (run as root, Docker up).

    python -m tests.fuzz.make_corpus

Captures real samples: ``/proc/PID/{stat,status,cmdline,environ,cgroup}`` of a few host
and container processes, ``/proc/PID/net/tcp{,6}`` of a container (a client connected to a
pool on the container's loopback) and raw netlink datagrams of the process events
connector. The hand-written seeds (configs, miner configs, bundle overlays, odd cases) are
kept in the tree as they are; this only overwrites files whose names start with ``live-``.
Environments are filtered to harmless variables first (no secrets from the host land in the
repository).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"
SAFE_ENV = (b"PATH=", b"HOME=", b"LANG=", b"TERM=", b"HOSTNAME=", b"POOL_URL=", b"WALLET=", b"XMRIG_",
            b"MINING_", b"THREADS_HINT=", b"DB_PASSWORD=", b"COIN=")


def write(kind: str, name: str, data: bytes) -> None:
    d = CORPUS / kind
    d.mkdir(parents=True, exist_ok=True)
    (d / f"live-{name}").write_bytes(data)


def safe_environ(raw: bytes) -> bytes:
    kept = [e for e in raw.split(b"\0") if e.startswith(SAFE_ENV)]
    return b"\0".join(kept) + b"\0" if kept else b""


def capture_process(pid: int, name: str) -> None:
    for field in ("stat", "status", "cmdline", "cgroup", "environ"):
        try:
            data = Path(f"/proc/{pid}/{field}").read_bytes()
        except PermissionError:  # e.g. /proc/1/environ under some sandboxes: that sample is skipped
            continue
        write(f"proc_{field}", name, safe_environ(data) if field == "environ" else data)


def capture_netlink(n: int = 6) -> None:
    from agent.collectors import cn_proc as cn
    from agent.collectors import proc_connector as pc

    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, cn.NETLINK_CONNECTOR)
    sock.bind((0, cn.CN_IDX_PROC))
    sock.send(cn.control_message(cn.PROC_CN_MCAST_LISTEN, 7))
    sock.settimeout(1.0)
    subprocess.run(["true"], check=True)
    got = 0
    try:
        while got < n:
            buf, _ = sock.recvfrom(pc.RECV_SIZE)
            write("netlink", f"{got}.bin", buf)
            got += 1
            subprocess.run(["true"], check=True)
    except TimeoutError:
        pass
    finally:
        sock.send(cn.control_message(cn.PROC_CN_MCAST_IGNORE, 0))
        sock.close()


def main() -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import docker

    from tests.helpers import build, containers, images, procs

    capture_process(1, "init")
    capture_process(os.getpid(), "python")
    sleeper = subprocess.Popen(["sleep", "30"], env={"PATH": "/usr/bin:/bin", "POOL_URL": "stratum+tcp://127.0.0.1:3333",
                                                      "DB_PASSWORD": "not-a-secret", "XMRIG_THREADS": "2"})
    try:
        time.sleep(0.2)
        capture_process(sleeper.pid, "sleep-env")
    finally:
        sleeper.kill()
        sleeper.wait()
    client = docker.from_env()
    image = images.build_base_image(client, build.build_helpers())
    with containers.tracking_scope("corpus"):
        # A benign client (nc) talking to the in-container pool: a real container TCP table
        # without a miner command line (other agents on a shared host would pause a miner).
        c = containers.run_container(client, image, ["sh", "-c", "fakepool 3333 & sleep 0.3; sleep 60 | nc 127.0.0.1 3333"])
        pid = containers.wait_for_process(c, "nc", 60)
        procs.wait_until(lambda: procs.established_to(pid, 3333), 30, 0.05, "nc connected")
        capture_process(pid, "container-nc")
        write("net_tcp", "container-nc", Path(f"/proc/{pid}/net/tcp").read_bytes())
        write("net_tcp6", "container-nc", Path(f"/proc/{pid}/net/tcp6").read_bytes())
    write("net_tcp", "host", Path("/proc/self/net/tcp").read_bytes()[:16384])
    write("net_tcp6", "host", Path("/proc/self/net/tcp6").read_bytes()[:16384])
    capture_netlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
