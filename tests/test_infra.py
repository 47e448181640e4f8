"""Tests of the test infrastructure itself: helper binaries, fake pools, test image,
container tracking. If these fail, detection tests cannot be trusted."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time

import pytest

from tests.helpers import build, containers, images, procs
from tests.helpers.containers import TEST_WALLET
from tests.helpers.pool import FakePool

MINER_WORDS = (b"xmrig", b"stratum", b"donate", b"randomx", b"cryptonight")


def _memory_contains(pid: int, needles: list[bytes]) -> set[bytes]:
    found: set[bytes] = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb") as mem:
        for line in maps:
            parts = line.split()
            if "r" not in parts[1]:
                continue
            start, end = (int(x, 16) for x in parts[0].split("-"))
            if end - start > 64 << 20:
                continue
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except OSError:
                continue
            found.update(n for n in needles if n in data)
    return found


# ------------------------------------------------------------------------- binaries


def test_helpers_build_static_and_cached(helper_bins):
    for name, path in helper_bins.as_dict().items():
        assert path.is_file() and os.access(path, os.X_OK), name
        head = path.read_bytes()[:4]
        assert head == b"\x7fELF", name
    # static: no program interpreter
    out = subprocess.run(["file", "-b", str(helper_bins.fakeminer)], capture_output=True, text=True)
    if out.returncode == 0 and out.stdout:
        assert "statically linked" in out.stdout or "static-pie" in out.stdout
    assert b"/lib64/ld-linux" not in helper_bins.fakepool.read_bytes()
    # second call: same directory, no rebuild
    t0 = time.monotonic()
    again = build.build_helpers()
    assert again == helper_bins
    assert time.monotonic() - t0 < 1.0


def test_fakeminer_has_xmrig_strings_plain_build_has_none(helper_bins):
    data = helper_bins.fakeminer.read_bytes()
    for s in (b"XMRig", b"donate.v2.xmrig.com", b"--donate-level", b"stratum+tcp://",
              b"cryptonight/r", b"randomx", b"XMRig/6.26.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0"):
        assert s in data, s
    plain = helper_bins.fakeminer_plain.read_bytes().lower()
    for word in MINER_WORDS:
        assert word not in plain, word


def test_fakeminer_refuses_non_loopback(helper_bins, spawn):
    for url in ("stratum+tcp://192.0.2.1:3333", "192.0.2.1:443", "stratum+ssl://[2001:db8::1]:443",
                "pool.invalid.example:3333"):
        t0 = time.monotonic()
        p = spawn([helper_bins.fakeminer, "-o", url, "-u", TEST_WALLET, "-t", "0", "--seconds", "5"],
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = p.communicate(timeout=5)
        assert p.returncode == 3, (url, err)
        assert time.monotonic() - t0 < 2.0
        assert b"refusing" in err


def test_fakeminer_login_keepalive_submit(helper_bins, spawn, fake_pool):
    p = spawn([helper_bins.fakeminer, "-o", fake_pool.url, "-u", TEST_WALLET, "-p", "rig1",
               "-t", "0", "--donate-level", "1", "--seconds", "20",
               "--keepalive-secs", "0.3", "--submit-secs", "0.3"])
    login = fake_pool.wait_for_login(timeout=5)
    assert login == {
        "id": 1, "jsonrpc": "2.0", "method": "login",
        "params": {"login": TEST_WALLET, "pass": "rig1",
                   "agent": "XMRig/6.26.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0",
                   "algo": ["rx/0"]},
    }
    assert fake_pool.lines[0].endswith("}}")   # one JSON object per line
    ka = fake_pool.wait_for("keepalived", timeout=5)
    assert ka["params"]["id"] == "sess1"      # took the session id from the login reply
    sub = fake_pool.wait_for("submit", timeout=5)
    assert sub["params"]["job_id"] == "job1"
    # one established connection from the miner to the pool
    conns = procs.established_to(p.pid, fake_pool.port)
    assert len(conns) == 1 and conns[0].remote_ip == "127.0.0.1"
    # SIGTERM: clean exit 0
    p.terminate()
    assert p.wait(timeout=5) == 0


@pytest.mark.parametrize("binary", ["fakeminer", "fakeminer-plain"])
def test_fakeminer_schemeless_url_algo_and_name(helper_bins, spawn, fake_pool, binary):
    p = spawn([helper_bins[binary], "-o", fake_pool.hostport, "-u", "WALLETX", "-a", "rx/0",
               "-t", "1", "--idle-threads", "2", "--name", "kworker/0:2", "--seconds", "20"])
    login = fake_pool.wait_for_login(timeout=5)
    assert login["params"]["login"] == "WALLETX"
    assert login["params"]["agent"].startswith("XMRig/6.26.0")
    assert procs.comm(p.pid) == "kworker/0:2"
    assert len(procs.threads(p.pid)) == 1 + 1 + 2
    # the decoded strings are in memory even for the plain build
    found = _memory_contains(p.pid, [b"donate.v2.xmrig.com", b"stratum+tcp://", b"cryptonight/r"])
    assert found == {b"donate.v2.xmrig.com", b"stratum+tcp://", b"cryptonight/r"}


def test_fakeminer_config_json_in_cwd_and_next_to_binary(helper_bins, spawn, tmp_path):
    with FakePool() as pool_a, FakePool() as pool_b:
        cwd = tmp_path / "cwd"
        cwd.mkdir()
        (cwd / "config.json").write_text(json.dumps({
            "autosave": True, "donate-level": 1, "cpu": {"enabled": True},
            "pools": [{"algo": None, "url": pool_a.hostport, "user": "WALLET_CWD",
                       "pass": "x", "keepalive": True, "tls": False}],
        }, indent=4))
        spawn([helper_bins.fakeminer, "-t", "0", "--seconds", "20"], cwd=cwd)
        assert pool_a.wait_for_login(5)["params"]["login"] == "WALLET_CWD"

        # renamed copy with its config next to it, started from elsewhere
        bindir = tmp_path / "hidden"
        bindir.mkdir()
        exe = bindir / "systemd-journal"
        shutil.copy2(helper_bins.fakeminer_plain, exe)
        (bindir / "config.json").write_text(json.dumps(
            {"pools": [{"url": f"stratum+tcp://{pool_b.hostport}", "user": "WALLET_BIN"}]}))
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        p = spawn([exe, "--seconds", "20", "-t", "0"], cwd=elsewhere)
        assert pool_b.wait_for_login(5)["params"]["login"] == "WALLET_BIN"
        assert procs.comm(p.pid) == "systemd-journal"

        # -c FILE
        cfg = tmp_path / "c.json"
        cfg.write_text(json.dumps({"pools": [{"url": pool_a.hostport, "user": "WALLET_C"}]}))
        spawn([helper_bins.fakeminer, "-c", cfg, "-t", "0", "--seconds", "20"], cwd=elsewhere)
        pool_a.wait_for(lambda m: m.get("params", {}).get("login") == "WALLET_C", timeout=5)


def test_fakeminer_without_pool_is_usage_error(helper_bins, tmp_path):
    res = subprocess.run([helper_bins.fakeminer, "-t", "0"], cwd=tmp_path, capture_output=True,
                         timeout=5, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert res.returncode == 2


def test_fakeminer_seconds_bound_and_alloc(helper_bins, spawn, fake_pool):
    p = spawn([helper_bins.fakeminer, "-o", fake_pool.url, "-t", "0", "--alloc-mb", "64",
               "--seconds", "1.5"])
    fake_pool.wait_for_login(5)
    status = open(f"/proc/{p.pid}/status").read()
    rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    assert rss_kb > 60 * 1024
    t0 = time.monotonic()
    assert p.wait(timeout=5) == 0
    assert time.monotonic() - t0 < 3


def test_fakeminer_burns_cpu(helper_bins, spawn, fake_pool):
    p = spawn([helper_bins.fakeminer, "-o", fake_pool.url, "-t", "1", "--seconds", "20"])
    fake_pool.wait_for_login(5)
    assert procs.cpu_fraction(p.pid, 1.0) > 0.3


def test_burner_burns_cpu_without_sockets(helper_bins, spawn):
    p = spawn([helper_bins.burner, "-t", "1", "--seconds", "20"])
    time.sleep(0.2)
    assert procs.cpu_fraction(p.pid, 1.0) > 0.3
    assert procs.socket_inodes(p.pid) == set()
    assert not any(w in helper_bins.burner.read_bytes().lower() for w in MINER_WORDS)
    p.terminate()
    assert p.wait(timeout=5) == 0


def test_fakepool_binary_answers_login(helper_bins, spawn, tmp_path):
    port_file = tmp_path / "port"
    log = tmp_path / "pool.log"
    spawn([helper_bins.fakepool, "0", "--port-file", port_file, "--log", log, "--seconds", "20"])
    port = int(procs.wait_until(lambda: port_file.exists() and port_file.read_text().strip(), 5))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"W","pass":"x"}}\n')
        reply = json.loads(s.makefile().readline())
        assert reply["id"] == 1 and reply["result"]["job"]["job_id"]
        s.sendall(b'{"id":2,"jsonrpc":"2.0","method":"keepalived","params":{"id":"x"}}\n')
        assert json.loads(s.makefile().readline())["result"]["status"] == "KEEPALIVED"
    procs.wait_until(lambda: "keepalived" in log.read_text(), 5)
    res = subprocess.run([helper_bins.fakepool, "3333", "--bind", "192.0.2.1"], capture_output=True,
                         timeout=5)
    assert res.returncode == 3


def test_fakepool_python_tls_and_auto(tmp_path):
    import ssl

    with FakePool(tls=True) as pool:
        assert pool.url.startswith("stratum+ssl://127.0.0.1:")
        ctx = ssl.create_default_context(cafile=str(pool.certfile))
        with socket.create_connection(pool.address, timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"TLSW"}}\n')
            assert json.loads(s.makefile().readline())["result"]["status"] == "OK"
        assert pool.wait_for_login(5)["params"]["login"] == "TLSW"
        assert pool.tls_connections == 1
    with FakePool(tls="auto") as pool:
        with socket.create_connection(pool.address, timeout=5) as s:
            s.sendall(b'{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"PLAIN"}}\n')
            assert json.loads(s.makefile().readline())["id"] == 1
        assert pool.tls_connections == 0
    with pytest.raises(ValueError):
        FakePool(host="192.0.2.1")


def test_spawn_kills_process_group(helper_bins):
    spawner = procs.Spawner()
    p = spawner.spawn(["sh", "-c", f"{helper_bins.burner} -t 1 & sleep 60"])
    child = procs.wait_until(
        lambda: procs.find_pids(lambda pid: os.getpgid(pid) == p.pid and procs.comm(pid) == "burner"),
        5)[0]
    spawner.cleanup()
    assert p.returncode is not None
    procs.wait_until(lambda: not os.path.exists(f"/proc/{child}") or
                     "Z" in open(f"/proc/{child}/stat").read().split(")")[1][:3], 5)


# --------------------------------------------------------------------------- docker


def test_base_image(docker_client, base_image):
    img = docker_client.images.get(base_image)
    assert img.labels.get(images.CONTENT_LABEL)
    # building again is a no-op
    t0 = time.monotonic()
    assert images.build_base_image(docker_client, build.build_helpers()) == base_image
    assert time.monotonic() - t0 < 2
    out = docker_client.containers.run(
        base_image, ["sh", "-c", "ls /usr/local/bin && ls /usr/bin/nc /bin/sleep /usr/bin/wget && id -un"],
        network_mode="none", remove=True, labels={containers.LABEL: "1",
                                                  containers.SESSION_LABEL: containers.SESSION_ID})
    text = out.decode()
    for name in ("fakeminer", "fakeminer-plain", "fakepool", "burner", "/usr/bin/nc", "/bin/sleep",
                 "root"):
        assert name in text


def test_run_container_tracking_and_tags(docker_client, base_image):
    with containers.tracking_scope("inner") as scope:
        c = containers.run_container(docker_client, base_image, ["sleep", "30"], "mwtest-track")
        c.pause()   # cleanup must cope with paused containers
        ref = containers.tag_image(docker_client, base_image, "thanhtudo/openjdk:latest")
        assert docker_client.images.get(ref).id == docker_client.images.get(base_image).id
        assert c.labels[containers.SESSION_LABEL] == containers.SESSION_ID
        assert len(scope.containers) == 1
    assert not [x for x in containers.session_containers(docker_client) if x.id == c.id]
    import docker

    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get("thanhtudo/openjdk:latest")
    with pytest.raises(ValueError):
        containers.run_container(docker_client, base_image, ["true"], network="bridge")


def test_miner_in_container(miner_in_container, docker_client):
    m = miner_in_container
    # visible from the host /proc, with the xmrig-style command line
    argv = procs.cmdline(m.pid)
    assert os.path.basename(argv[0]) == "fakeminer"
    assert argv[argv.index("-o") + 1] == "stratum+tcp://127.0.0.1:3333"
    assert argv[argv.index("-u") + 1] == TEST_WALLET
    # its cgroup names the container
    assert m.id in procs.cgroup(m.pid)
    assert m.pid in containers.container_pids(m.container)
    # the connection, seen in the container's own network namespace
    conns = procs.established_to(m.pid, 3333)
    assert conns and conns[0].remote_ip == "127.0.0.1"
    # the host namespace does not have it
    host_conns = [c for c in procs.tcp_connections(os.getpid(), own_only=False)
                  if c.inode == conns[0].inode]
    assert not host_conns
    # the pool inside saw the login
    line = procs.wait_until(lambda: [ln for ln in m.pool_lines() if '"login"' in ln], 5)[0]
    msg = json.loads(line)
    assert msg["params"]["login"] == TEST_WALLET
    assert msg["params"]["agent"].startswith("XMRig/6.26.0")
    # and it burns CPU
    assert procs.cpu_fraction(m.pid, 1.0) > 0.3
    # the executable is readable through /proc/PID/exe from the host
    with open(f"/proc/{m.pid}/exe", "rb") as f:
        assert b"donate.v2.xmrig.com" in f.read()


def test_one_off_image_config_mode_renamed_miner(docker_client, docker_image, docker_run,
                                                 helper_bins, base_image):
    cfg = json.dumps({"pools": [{"url": "127.0.0.1:3333", "user": TEST_WALLET, "pass": "x"}]})
    start = "#!/bin/sh\nfakepool 3333 & sleep 0.3\ncd /app && exec ./kworker -t 1 --seconds 60\n"
    tag = docker_image("thieunutre/golang:mwtest", {
        "/app/config.json": (cfg.encode(), 0o644),
        "/app/start.sh": (start.encode(), 0o755),
        "/app/kworker": (helper_bins.fakeminer_plain.read_bytes(), 0o755),
        "/usr/local/bin/fakepool": (helper_bins.fakepool.read_bytes(), 0o755),
    }, cmd='["/app/start.sh"]', labels={"org.example.purpose": "test"})
    img = docker_client.images.get(tag)
    assert img.attrs["Config"]["Cmd"] == ["/app/start.sh"]
    c = docker_run(tag, None, name_prefix="mwtest-cfg")
    pid = containers.wait_for_process(c, "kworker")
    procs.wait_until(lambda: procs.established_to(pid, 3333), 10)
    assert procs.comm(pid) == "kworker"
    assert os.readlink(f"/proc/{pid}/cwd") == "/app"
    assert "-o" not in procs.cmdline(pid)
    line = procs.wait_until(lambda: [ln for ln in c.logs().decode().splitlines()
                                     if ln.startswith("RECV ") and '"login"' in ln], 5)[0]
    assert json.loads(line[5:])["params"]["login"] == TEST_WALLET
