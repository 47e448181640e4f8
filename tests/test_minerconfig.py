"""Miner configs: parsing real-world shapes, and finding them safely in a process's file system view."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from tests.helpers import procs as procs_mod

from agent.collectors.minerconfig import (
    MAX_CONFIG_BYTES,
    candidate_paths,
    config_args,
    find_miner_config,
    parse_miner_config,
    strip_jsonc,
)

WALLET = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"

XMRIG_CONFIG = {
    "autosave": True,
    "cpu": {"enabled": True, "huge-pages": True, "max-threads-hint": 100},
    "opencl": False,
    "cuda": False,
    "donate-level": 1,
    "randomx": {"init": -1, "mode": "auto"},
    "pools": [
        {"algo": None, "coin": "monero", "url": "pool.supportxmr.com:443", "user": WALLET, "pass": "x",
         "keepalive": True, "tls": True},
        {"url": "stratum+tcp://xmr.pool.example:3333", "user": "backup-wallet"},
    ],
}


def test_xmrig_config():
    """A full xmrig config gives its pools, wallets and miner keys."""
    cfg = parse_miner_config(json.dumps(XMRIG_CONFIG, indent=4), "/app/config.json")
    assert cfg is not None
    assert cfg.path == "/app/config.json"
    assert cfg.pools == ("pool.supportxmr.com:443", "stratum+tcp://xmr.pool.example:3333")
    assert cfg.users == (WALLET, "backup-wallet")
    assert set(cfg.keys) >= {"cpu", "cuda", "opencl", "donate-level", "randomx"}


def test_jsonc_with_comments_and_trailing_commas():
    """Comments and trailing commas (JSONC) do not hide the pools; '//' inside strings survives."""
    text = textwrap.dedent(f"""\
        // my miner
        {{
            /* pools below */
            "pools": [
                {{"url": "stratum+ssl://gulf.moneroocean.stream:20128", "user": "{WALLET}",}}, // main
            ],
            "http": {{"url": "http://127.0.0.1:8080//x"}},
        }}
        """)
    cfg = parse_miner_config(text)
    assert cfg is not None and cfg.pools == ("stratum+ssl://gulf.moneroocean.stream:20128",)
    assert "//x" in strip_jsonc(text)


def test_top_level_url_user_config():
    """cpuminer-style configs with a top-level url and user are miner configs."""
    cfg = parse_miner_config('{"url": "stratum+tcp://pool.example:3333", "user": "wallet1", "pass": "x", "algo": "cn"}')
    assert cfg is not None and cfg.pools == ("stratum+tcp://pool.example:3333",) and cfg.users == ("wallet1",)


def test_bare_host_port_needs_pool_keys():
    """A bare host:port url counts only next to pool keys (user, pass, algo...)."""
    assert parse_miner_config('{"pools": [{"url": "10.0.0.5:3333", "user": "w"}]}') is not None
    assert parse_miner_config('{"pools": [{"url": "db.internal:5432", "size": 10}]}') is None
    assert parse_miner_config('{"url": "localhost:8080"}') is None


def test_miner_only_keys_without_pools():
    """Miner-only keys (randomx, donate-level) mark a miner config even without pools."""
    cfg = parse_miner_config('{"donate-level": 0, "randomx": {"1gb-pages": true}}')
    assert cfg is not None and cfg.pools == () and set(cfg.keys) == {"donate-level", "randomx"}


def test_broken_json_falls_back_to_regex():
    """A config that is not JSON even after cleanup is still searched for pools."""
    text = '{ "pools": [ { "url": "stratum+tcp://p.example:4444", "user": "' + WALLET + '" } ] oops'
    cfg = parse_miner_config(text)
    assert cfg is not None and cfg.pools == ("stratum+tcp://p.example:4444",) and cfg.users == (WALLET,)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps({"name": "web", "version": "1.0.0", "scripts": {"start": "node index.js"},
                    "repository": {"type": "git", "url": "https://github.com/x/y.git"},
                    "bugs": {"url": "https://github.com/x/y/issues"}, "dependencies": {"express": "^4"}}),
        json.dumps({"version": "0.2.0", "configurations": [{"type": "chrome", "request": "launch",
                                                             "url": "http://localhost:8080", "webRoot": "${x}"}]}),
        json.dumps({"editor.fontSize": 14, "http.proxy": "http://proxy:3128", "files.exclude": {}}),
        json.dumps({"pools": [{"url": "postgres://db/app", "max": 10}]}),
        json.dumps({"compilerOptions": {"target": "es2020"}, "cpu": 2}),
        "[1, 2, 3]",
        "",
        "not json at all",
        "\xff\xfe garbage",
    ],
)
def test_normal_configs_are_not_miner_configs(text):
    """package.json, VS Code configs, a DB pool config, lists and garbage are not miner configs."""
    assert parse_miner_config(text) is None


def test_bytes_with_bom_and_bad_utf8():
    """Bytes with a BOM and undecodable bytes are parsed without error."""
    data = b"\xef\xbb\xbf" + json.dumps({"pools": [{"url": "stratum+tcp://a.b:1", "user": "w\xff"}]},
                                        ensure_ascii=False).encode("latin-1")
    cfg = parse_miner_config(data)
    assert cfg is not None and cfg.pools == ("stratum+tcp://a.b:1",)


def test_config_args():
    """-c FILE, --config FILE and --config=FILE are found; multi-line code after -c is not."""
    assert config_args(["xmrig", "-c", "a.json", "--config=/b.json", "--config", "c.json"]) == [
        "a.json", "/b.json", "c.json"]
    assert config_args(["/opt/m/xmrig", "-c", "import os\nos.system('x')"]) == []
    assert config_args(["xmrig", "-c"]) == []


@pytest.mark.parametrize("argv0, exe", [
    ("sh", "/bin/dash"), ("bash", "/usr/bin/bash"), ("-bash", "/usr/bin/bash"), ("zsh", ""), ("ash", "/bin/busybox"), ("busybox", "/bin/busybox"),
    ("sh", "/bin/busybox"), ("/usr/bin/python3", "/usr/bin/python3.11"), ("python", ""), ("pypy3", ""),
    ("perl", "/usr/bin/perl5.36.0"), ("ruby", "/usr/bin/ruby3.1"), ("node", "/usr/bin/node"), ("php8.2", ""),
    ("lua5.4", ""), ("luajit", ""), ("awk", "/usr/bin/gawk"), ("cron-job", "/usr/bin/bash"),  # argv0 renamed: exe counts
])
def test_shells_and_interpreters_name_no_config(argv0, exe):
    """For a shell or an interpreter (by executable or argv[0] basename) neither -c nor --config is a config path."""
    assert config_args([argv0, "-c", "config.json", "--config=/b.json", "--config", "c.json"], exe=exe) == []


def test_short_c_only_when_the_caller_says_it_looks_like_a_miner():
    """-c FILE is a config path only with short_c; --config FILE and --config=FILE always (not an interpreter)."""
    assert config_args(["gcc", "-c", "main.c"], exe="/usr/bin/gcc", short_c=False) == []
    assert config_args(["tool", "-c", "a", "--config", "b", "--config=c"], exe="/usr/bin/tool", short_c=False) == ["b", "c"]
    assert config_args(["xmrig", "-c", "a"], exe="/opt/xmrig", short_c=True) == ["a"]
    assert config_args(["sleep", "-c", "a"], exe="/bin/busybox") == ["a"]  # a busybox applet that is no shell


def test_candidate_paths_order():
    """Explicit config first, then cwd names, then names next to the executable; '..' resolved from cwd."""
    got = candidate_paths(["m", "-c", "../etc/m.json"], "/app/run", "/opt/m/xmrig")
    assert got[0] == ("root", "/app/etc/m.json")
    assert ("cwd", "config.json") in got and ("root", "/opt/m/config.json") in got
    assert got.index(("cwd", "config.json")) < got.index(("root", "/opt/m/config.json"))


# --------------------------------------------------------------------------- real processes

SLEEPER = "import sys, time\nprint('ready', flush=True)\ntime.sleep(60)\n"
CHROOT_SLEEPER = (
    "import os, sys, time\n"
    "os.chroot(sys.argv[1]); os.chdir(sys.argv[2])\n"
    "print('ready', flush=True)\n"
    "time.sleep(60)\n"
)


@pytest.fixture
def procs():
    """Start python children (waiting for their 'ready') that are killed and reaped however the test ends."""
    started: list[subprocess.Popen] = []

    def start(args, **kw):
        p = subprocess.Popen(args, stdout=subprocess.PIPE, text=True, **kw)
        started.append(p)
        assert p.stdout.readline().strip() == "ready"
        return p

    yield start
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def _find(pid: int, cmdline, exe: str = ""):
    """find_miner_config on a real process; ``exe``/``cmdline`` may say what a miner would have (the
    sleepers are python, whose own -c and --config are never config paths)."""
    cwd = os.readlink(f"/proc/{pid}/cwd")
    exe = exe or os.readlink(f"/proc/{pid}/exe")
    return find_miner_config("/proc", pid, cmdline, cwd, exe)

MINER = "/opt/m/xmrig"  # what the command line of a miner would say (nothing is read there)


def test_finds_config_json_in_cwd(tmp_path, procs):
    """A process started in a directory holding a miner config.json has it found."""
    (tmp_path / "config.json").write_text(json.dumps(XMRIG_CONFIG))
    args = [sys.executable, "-c", SLEEPER, "unique-cwd-test"]
    p = procs(args, cwd=tmp_path)
    cfg = _find(p.pid, args)
    assert cfg is not None and cfg.path == f"{tmp_path}/config.json" and WALLET in cfg.users


def test_finds_config_via_dash_c(tmp_path, procs):
    """A config named by -c relative to the cwd, or by --config=ABS, is found."""
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "pool.json").write_text('{"pools": [{"url": "stratum+tcp://x.example:3333", "user": "w"}]}')
    script = tmp_path / "dao.py"
    script.write_text(SLEEPER)
    for flag in (["-c", "conf/pool.json"], [f"--config={tmp_path}/conf/pool.json"]):
        args = [sys.executable, str(script), *flag]
        p = procs(args, cwd=tmp_path)
        assert _find(p.pid, args) is None  # python's -c is code, its --config its script's
        cfg = _find(p.pid, [MINER, *flag], exe=MINER)
        assert cfg is not None and cfg.pools == ("stratum+tcp://x.example:3333",)
        assert cfg.path == f"{tmp_path}/conf/pool.json"


def test_ignores_package_json_like_config(tmp_path, procs):
    """A normal app's config.json in the cwd is not reported."""
    (tmp_path / "config.json").write_text(json.dumps({"name": "app", "port": 8080, "db": {"url": "x:5432"}}))
    args = [sys.executable, "-c", SLEEPER]
    p = procs(args, cwd=tmp_path)
    assert _find(p.pid, args) is None


def test_fifo_and_oversized_configs_are_not_read(tmp_path, procs):
    """A FIFO named config.json is never opened and a config over the size cap is skipped."""
    os.mkfifo(tmp_path / "config.json")
    big = {"pools": [{"url": "stratum+tcp://x.example:3333", "user": "w"}], "pad": "x" * MAX_CONFIG_BYTES}
    (tmp_path / "xmrig.json").write_text(json.dumps(big))
    args = [sys.executable, "-c", SLEEPER]
    p = procs(args, cwd=tmp_path)
    box = {}
    t = threading.Thread(target=lambda: box.setdefault("r", _find(p.pid, args)), daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "a FIFO was opened"
    assert box["r"] is None


@pytest.fixture
def jail(tmp_path):
    """A chroot tree (the process's own root, like a container's) next to a host dir holding a miner config."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "evil.json").write_text(json.dumps(XMRIG_CONFIG))
    root = tmp_path / "root"
    (root / "app").mkdir(parents=True)
    return root, host


def test_symlinked_config_out_of_root_is_refused(jail, procs):
    """In a chrooted process, config.json and -c paths that are symlinks pointing out of its root are refused."""
    root, host = jail
    (root / "app" / "config.json").symlink_to(host / "evil.json")  # absolute host path
    (root / "app" / "xmrig.json").symlink_to("../../host/evil.json")  # relative way out
    (root / "hostdir").symlink_to(host)  # a directory symlink on the -c path
    args = [sys.executable, "-c", CHROOT_SLEEPER, str(root), "/app", "-c", "/hostdir/evil.json"]
    p = procs(args)
    assert os.readlink(f"/proc/{p.pid}/root") == str(root)
    assert _find(p.pid, [MINER, "-c", "/hostdir/evil.json"], exe=MINER) is None


def test_config_inside_chroot_is_read_in_its_view(jail, procs):
    """An absolute -c path is read beneath the process's root, not the host's."""
    root, _host = jail
    (root / "etc").mkdir()
    (root / "etc" / "m.json").write_text('{"url": "stratum+tcp://in.jail:3333", "user": "jailed"}')
    args = [sys.executable, "-c", CHROOT_SLEEPER, str(root), "/app", "-c", "/etc/m.json"]
    p = procs(args)
    cfg = _find(p.pid, [MINER, "-c", "/etc/m.json"], exe=MINER)
    assert cfg is not None and cfg.path == "/etc/m.json" and cfg.users == ("jailed",)


def test_absent_cache_skips_settled_dirs_and_notices_new_files(tmp_path, procs):
    """Directories known to hold no config are not probed again, until a name is added to them."""
    args = [sys.executable, "-c", SLEEPER]
    p = procs(args, cwd=tmp_path)
    cwd, exe = os.readlink(f"/proc/{p.pid}/cwd"), os.readlink(f"/proc/{p.pid}/exe")
    absent: dict = {}
    future = time.time_ns() + 10_000_000_000
    assert find_miner_config("/proc", p.pid, args, cwd, exe, absent=absent, settled_ns=future) is None
    st = os.stat(tmp_path)
    assert (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns) in absent
    (tmp_path / "xmrig.json").write_text('{"pools": [{"url": "stratum+tcp://n.example:1", "user": "w"}]}')
    cfg = find_miner_config("/proc", p.pid, args, cwd, exe, absent=absent, settled_ns=future)
    assert cfg is not None and cfg.path == f"{tmp_path}/xmrig.json"
    # with the real clock a just-changed directory is not remembered
    fresh: dict = {}
    (tmp_path / "xmrig.json").unlink()
    assert find_miner_config("/proc", p.pid, args, cwd, exe, absent=fresh, settled_ns=time.time_ns() - 10**9) is None
    st = os.stat(tmp_path)
    assert (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns) not in fresh


def test_vanished_process_raises(procs):
    """A process that is gone makes find_miner_config raise OSError for the collector to count."""
    p = subprocess.Popen(["true"])
    p.wait()
    with pytest.raises(OSError):
        find_miner_config("/proc", p.pid, ["true"], "/", "/usr/bin/true")


# --------------------------------------------------------------------------- planted configs, judged

def _judged(pid: int):
    from agent.collectors.snapshots import SnapshotCollector
    from agent.config import Config
    from agent.judge import Judge
    from agent.signatures import load_bundle

    cfg, sigs = Config(), load_bundle()
    snap = SnapshotCollector(cfg, sigs).snapshot(pid)
    assert snap is not None
    return snap, Judge.from_config(cfg, sigs).process(snap, None, ())


def test_a_config_planted_where_sh_dash_c_points_is_not_its_config(tmp_path, spawn):
    """A real ``sh -c 'sleep 30; true'`` in a shared directory where someone planted a miner config named
    like its -c argument (and a config.json): neither is its own, and it stays below medium."""
    from agent.model import Severity

    script = "sleep 30; true"  # "; true": the shell stays, it does not exec sleep
    (tmp_path / script).write_text(json.dumps(XMRIG_CONFIG))
    p = spawn(["sh", "-c", script], cwd=tmp_path)
    procs_mod.wait_until(lambda: procs_mod.cmdline(p.pid) == ["sh", "-c", script], 5, 0.02, "sh started")
    snap, found = _judged(p.pid)
    assert snap.miner_config is None  # its -c is code: the planted file is never read as its config
    (tmp_path / "config.json").write_text(json.dumps(XMRIG_CONFIG))
    snap, found = _judged(p.pid)
    assert snap.miner_config is not None and snap.miner_config.path == f"{tmp_path}/config.json"
    assert found is None or found.severity < Severity.MEDIUM, found
    assert all(not e.strong for e in (found.evidence if found else ()))


def test_a_fake_miner_with_dash_c_still_has_its_config(tmp_path, spawn, helper_bins, fake_pool):
    """``fakeminer -c conf/cfg.json`` (a miner by its strings and name): the config is its own, and it is high."""
    from agent.model import Severity

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "cfg.json").write_text(json.dumps(
        {**XMRIG_CONFIG, "pools": [{"url": fake_pool.url, "user": WALLET, "pass": "x"}]}))
    p = spawn([helper_bins.fakeminer, "-c", "conf/cfg.json", "-t", "1", "--seconds", "30"], cwd=tmp_path)
    procs_mod.wait_until(lambda: procs_mod.established_to(p.pid, fake_pool.port), 10, 0.05, "miner connected")
    snap, found = _judged(p.pid)
    assert snap.miner_config is not None and snap.miner_config.path == f"{tmp_path}/conf/cfg.json"
    assert found is not None and found.severity >= Severity.HIGH, found
    own = [e for e in found.evidence if e.signal == "config" and "names pool(s)" in e.detail]
    assert own and own[0].strong and "working directory" not in own[0].detail, own
