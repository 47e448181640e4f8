"""``minerwatch scan-image``: the streamed image scanner, on hand-made exports and on real Docker images."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest

from agent import signatures
from agent.collectors.docker_inventory import container_from_inspect
from agent.detectors.base import Context
from agent.engine import Engine
from agent.images.scanner import ImageScanError, ImageScanner, ScanLimits, alerts
from agent.model import Severity
from tests.alerts_schema import validate
from tests.helpers import image_archives as ia
from tests.helpers.containers import TEST_WALLET, wait_for_process
from tests.sweeping import sweep, write_config

REPO = Path(__file__).resolve().parents[1]
# Runs the real CLI whether or not main.py registers scan-image yet.
_RUNNER = ("import sys; from agent.cli import main as m; from agent.cli.scan_image_cmd import scan_image; "
           "m.cli.commands.setdefault('scan-image', scan_image); m.main(sys.argv[1:])")
DAO = (b"#!/bin/sh\n# stand-in for the campaign's dao.py: starts a pool and the miner\n"
       b"fakepool 3333 &\nsleep 0.3\n"
       b"exec /usr/local/bin/fakeminer -o stratum+tcp://127.0.0.1:3333 -u " + TEST_WALLET.encode()
       + b" -t 1 --seconds 120\n")


@pytest.fixture(scope="module")
def sig():
    return signatures.load_bundle()


@pytest.fixture(scope="module")
def miner(helper_bins) -> bytes:
    return helper_bins.fakeminer.read_bytes()


def scan(sig, archive: bytes, image: str = "mwtest/handmade:1", **limits):
    return ImageScanner(sig, limits=ScanLimits(**limits)).scan(io.BytesIO(archive), image)


def file_findings(result, path: str):
    return [f for f in result.findings if f.file is not None and f.file.path == path]


def run_cli(*args: str, cwd=REPO, env=None, timeout: float = 300):
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}
    proc = subprocess.run([sys.executable, "-c", _RUNNER, "scan-image", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)
    found = json.loads(proc.stdout) if "--json" in args and proc.returncode in (0, 1) else []
    for a in found:
        validate(a)
    return proc, found


# ------------------------------------------------------------------ hand-made exports, no Docker


@pytest.mark.parametrize("layout", ["legacy", "oci", "linked"])
@pytest.mark.parametrize("manifest_first", [False, True])
def test_layout_and_manifest_order(sig, miner, layout, manifest_first):
    """Legacy, OCI and symlinked layouts, manifest first or last, an empty layer: the miner is found in its layer."""
    layers = [ia.layer_tar([ia.reg("bin/sh", b"#!/bin/true\n", 0o755)]), ia.layer_tar([]),
              ia.layer_tar([ia.reg("usr/bin/kworker", miner, 0o755)], compress=layout == "oci")]
    result = scan(sig, ia.save_archive(layers, layout=layout, manifest_first=manifest_first))
    (f,) = file_findings(result, "/usr/bin/kworker")
    assert f.severity is Severity.CRITICAL and not f.file.hidden and result.layer_of[f.finding_id] == 3
    assert f.file.layer.startswith("sha256:") and result.image_id.startswith("sha256:")
    assert [(layer.index, layer.files, layer.error) for layer in result.layers] == [(1, 1, ""), (2, 0, ""), (3, 1, "")]
    assert not result.notes


@pytest.mark.parametrize(("later", "how"), [
    ([ia.whiteout("usr/bin/m")], "deleted by layer 2"),
    ([ia.whiteout("usr")], "deleted by layer 2"),
    ([ia.opaque("usr/bin"), ia.reg("usr/bin/other", b"x")], "deleted by layer 2"),
    ([ia.reg("usr/bin/m", b"#!/bin/sh\necho replaced\n", 0o755)], "replaced by layer 2"),
])
def test_file_hidden_by_later_layer(sig, miner, later, how):
    """A miner deleted, made opaque or replaced by a later layer is still reported, as hidden in its layer."""
    layers = [ia.layer_tar([ia.reg("usr/bin/m", miner, 0o755)]), ia.layer_tar(later)]
    result = scan(sig, ia.save_archive(layers))
    (f,) = file_findings(result, "/usr/bin/m")
    assert f.file.hidden and f.severity is Severity.CRITICAL
    assert any(e.signal == "location" and "hidden in layer 1 of 2" in e.detail and how in e.detail for e in f.evidence)
    (a,) = [a for a in alerts(result, result.findings) if a.get("file", {}).get("path") == "/usr/bin/m"]
    assert validate(a)["minerwatch"]["image"]["hidden"] is True and a["minerwatch"]["image"]["layer_index"] == 1


def test_one_finding_per_file(sig, miner):
    """Two different miners are two findings; the same miner copied up into a later layer is one, visible."""
    layers = [ia.layer_tar([ia.reg("a/one", miner, 0o755), ia.reg("a/two", miner + b"\0x", 0o755)]),
              ia.layer_tar([ia.reg("a/one", miner, 0o700)])]
    result = scan(sig, ia.save_archive(layers))
    (one,), (two,) = file_findings(result, "/a/one"), file_findings(result, "/a/two")
    assert not one.file.hidden and result.layer_of[one.finding_id] == 2 and result.layer_of[two.finding_id] == 1
    assert len({f.finding_id for f in result.findings}) == len(result.findings) == 2


def test_config_launcher_and_pool_settings(sig):
    """A dao.py entrypoint, pool variables and a look-alike name make a config finding that stays below critical."""
    layer = ia.layer_tar([ia.reg("app/dao.py", b"#!/bin/sh\nexit 0\n", 0o755)])
    archive = ia.save_archive([layer], repo_tag="thanhtudo/openjdk:latest", entrypoint=["python3", "/app/dao.py"],
                              env=["POOL_URL=stratum+tcp://127.0.0.1:3333"])
    result = scan(sig, archive, "thanhtudo/openjdk:latest")
    (f,) = [f for f in result.findings if f.file is None]
    text = " ".join(e.detail for e in f.evidence)
    assert "dao.py" in text and "imitates" in text and "POOL_URL" in text and "/app/dao.py (layer 1)" in text
    assert Severity.MEDIUM <= f.severity <= Severity.HIGH and f.container.image == "thanhtudo/openjdk:latest"


def test_hostile_layer_is_only_data(sig, miner, tmp_path, monkeypatch):
    """Traversal names, an 8 GiB sparse file, link loops, links out, a FIFO and a device: bounded, nothing written."""
    canary = tmp_path / "canary"
    canary.mkdir()
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    tail = b"XMRig donate.v2.xmrig.com donate.ssl.xmrig.com --donate-level= .config/xmrig.json"
    entries = [
        ia.reg("../../../../../.." + str(canary) + "/pwned", miner, 0o755),
        ia.reg("/" + str(canary) + "/abs", b"#!/bin/sh\n", 0o755),
        ia.sparse("opt/huge", 8 << 30, head=b"\x7fELF" + bytes(60), tail=tail),
        ia.symlink("loop/a", "b"), ia.symlink("loop/b", "a"), ia.symlink("loop/self", "self"),
        ia.symlink("etc/out", "../../../../../etc/shadow"), ia.hardlink("etc/hl", "../../../../etc/passwd"),
        ia.fifo("run/fifo"), ia.chardev("dev/mem2", 1, 1),
    ]
    outer_extra = [("../../../../.." + str(canary) + "/outer.json", b"{}"),
                   ("../../../../.." + str(canary) + "/outer/layer.tar", ia.layer_tar([ia.reg("x", b"#!/bin/sh\n", 0o755)]))]
    started = time.monotonic()
    result = scan(sig, ia.save_archive([ia.layer_tar(entries)], extra=outer_extra), max_file_bytes=4 << 20)
    assert time.monotonic() - started < 60
    (f,) = file_findings(result, str(canary) + "/pwned")  # a path inside the image, clamped at its root
    assert f.severity is Severity.CRITICAL
    assert not file_findings(result, "/opt/huge"), "the tail of the sparse file must not have been read"
    assert result.bytes_hashed <= len(miner) + (4 << 20) + 64 and result.partial_files == 1
    assert any("/opt/huge" in n and "only in part" in n for n in result.notes)
    assert result.skipped["symlink"] == 4 and result.skipped["hardlink"] == 1
    assert result.skipped["fifo"] == 1 and result.skipped["device"] == 1 and result.skipped["odd_name"] == 2
    assert any("not listed in manifest.json" in n for n in result.notes)
    assert list(canary.iterdir()) == [] and list(work.iterdir()) == []


def test_total_byte_budget(sig, miner):
    """Past the total byte budget, executables are listed as partly read instead of hashed."""
    files = [ia.reg(f"bin/tool{i}", os.urandom(1 << 20), 0o755) for i in range(4)]
    result = scan(sig, ia.save_archive([ia.layer_tar(files)]), max_total_bytes=(2 << 20) + 100)
    assert result.candidates == 4 and result.partial_files == 2 and result.bytes_hashed <= (2 << 20) + 100
    assert any("total byte limit" in n for n in result.notes)


def test_unreadable_layer_does_not_stop_the_scan(sig, miner):
    """A garbage layer and a layer with an oversized pax header are noted; the other layer is still scanned."""
    pax = io.BytesIO()
    with tarfile.open(fileobj=pax, mode="w", format=tarfile.PAX_FORMAT) as tar:
        ti = tarfile.TarInfo("x")
        ti.pax_headers = {"comment": "x" * (2 << 20)}
        tar.addfile(ti, io.BytesIO(b""))
    layers = [os.urandom(4096), pax.getvalue(), ia.layer_tar([ia.reg("usr/bin/m", miner, 0o755)])]
    result = scan(sig, ia.save_archive(layers))
    assert file_findings(result, "/usr/bin/m")
    assert [bool(layer.error) for layer in result.layers] == [True, True, False]
    assert any("pax header" in layer.error for layer in result.layers)


@pytest.mark.parametrize("data", [b"not a tar at all" * 100, None])
def test_broken_export_is_an_error(sig, miner, data):
    """Garbage or a truncated export raises ImageScanError (exit code 2), never a quiet clean result."""
    if data is None:
        archive = ia.save_archive([ia.layer_tar([ia.reg("usr/bin/m", miner, 0o755)])])
        data = archive[: len(archive) // 2]
    with pytest.raises(ImageScanError):
        scan(sig, data)


def test_endless_export_times_out(sig):
    """An export that never ends (a 1 TiB member streaming zeros) stops at the timeout."""
    def endless():
        outer = tarfile.TarInfo("a/layer.tar")
        outer.size = 1 << 40
        inner = tarfile.TarInfo("usr/bin/x")
        inner.size, inner.mode = 1 << 39, 0o755
        yield outer.tobuf(tarfile.GNU_FORMAT) + inner.tobuf(tarfile.GNU_FORMAT)
        zeros = bytes(1 << 20)
        while True:
            yield zeros

    started = time.monotonic()
    with pytest.raises(ImageScanError, match="timed out"):
        ImageScanner(sig, limits=ScanLimits(max_file_bytes=1 << 20, timeout_s=2)).scan(endless(), "x:1")
    assert time.monotonic() - started < 30


# ------------------------------------------------------------------ real Docker images


def dao_image(docker_image, helper_bins, tag: str) -> str:
    files = {"/app/dao.py": (DAO, 0o755), "/usr/local/bin/fakeminer": (helper_bins.fakeminer.read_bytes(), 0o755),
             "/usr/local/bin/fakepool": (helper_bins.fakepool.read_bytes(), 0o755)}
    return docker_image(tag, files, entrypoint='["/app/dao.py"]', cmd="[]")


@pytest.mark.parametrize("name", ["thanhtudo/openjdk:latest", "thieunutre/golang", "chanquaa/jenkins-agent:mw"])
def test_lookalike_image_with_dao_launcher(docker_client, docker_image, helper_bins, name):
    """Look-alike images whose dao.py entrypoint starts a miner: exit 1, launcher reported, miner critical."""
    dao_image(docker_image, helper_bins, name)
    proc, found = run_cli(name, "--json")
    assert proc.returncode == 1, proc.stderr
    config = [a for a in found if "file" not in a]
    assert config and any("dao.py" in e["detail"] for e in config[0]["minerwatch"]["evidence"])
    assert config[0]["minerwatch"]["severity"] in ("medium", "high")
    (miner_alert,) = [a for a in found if a.get("file", {}).get("path") == "/usr/local/bin/fakeminer"]
    assert miner_alert["minerwatch"]["severity"] == "critical" and miner_alert["container"]["image"]["name"] == name
    human = run_cli(name)[0]
    assert human.returncode == 1 and "dao.py" in human.stdout and "/usr/local/bin/fakeminer" in human.stdout


@pytest.mark.parametrize("name", ["openjdk:17", "golang:1.22"])
def test_clean_official_image(docker_client, docker_image, docker_run, name):
    """Clean images under official names: exit 0, no alerts, and a container started from one has no image evidence."""
    docker_image(name, {"/usr/local/bin/app": (b"#!/bin/sh\necho hello\n", 0o755)})
    proc, found = run_cli(name, "--json", "--min-severity", "low")
    assert (proc.returncode, found) == (0, []), proc.stderr
    container = docker_run(name, ["sleep", "30"])
    info = container_from_inspect(docker_client.api.inspect_container(container.id))
    assert info.image == name
    assert Engine().container_evidence(info, Context(signatures.load_bundle(), container=info)) == []


def test_miner_deleted_in_later_layer(docker_client, base_image, helper_bins, tmp_path):
    """docker build: COPY a miner, then RUN rm it; scan-image reports it as hidden in its layer."""
    (tmp_path / "m").write_bytes(helper_bins.fakeminer.read_bytes() + b"\0layer-test")
    (tmp_path / "Dockerfile").write_text(f"FROM {base_image}\nCOPY m /usr/bin/m\nRUN rm /usr/bin/m\n")
    tag = f"mwtest/deleted:{uuid.uuid4().hex[:8]}"
    image, _ = docker_client.images.build(path=str(tmp_path), tag=tag, rm=True, forcerm=True, network_mode="none",
                                          labels={"minerwatch.test": "1"})
    try:
        proc, found = run_cli(tag, "--json")
        assert proc.returncode == 1, proc.stderr
        (a,) = [a for a in found if a.get("file", {}).get("path") == "/usr/bin/m"]
        assert a["minerwatch"]["image"]["hidden"] is True and a["minerwatch"]["severity"] == "critical"
        assert a["minerwatch"]["image"]["layer_index"] == 2
        assert any("hidden in layer 2 of 3" in e["detail"] and "deleted by layer 3" in e["detail"]
                   for e in a["minerwatch"]["evidence"])
    finally:
        docker_client.images.remove(image.id, force=True)  # with its untagged build parents


def test_hostile_image_loaded_into_docker(docker_client, miner, tmp_path):
    """A docker-loaded image with odd names, link loops, a FIFO, a device and a big file: bounded, nothing written."""
    canary, work, tmp = (tmp_path / d for d in ("canary", "cwd", "tmp"))
    for d in (canary, work, tmp):
        d.mkdir()
    big = b"\x7fELF" + bytes((40 << 20) - 4)
    layer = ia.layer_tar([
        ia.reg(str(canary) + "/pwned", miner, 0o755), ia.reg("usr/../usr/sbin/kthreadd", miner + b"\0x", 0o755),
        ia.reg("opt/big.bin", big, 0o755), ia.symlink("loop/a", "b"), ia.symlink("loop/b", "a"),
        ia.symlink("etc/out", "../../../../etc/shadow"), ia.hardlink("usr/sbin/hl", "usr/sbin/kthreadd"),
        ia.fifo("run/fifo"), ia.chardev("dev/null2", 1, 3),
    ])
    tag = f"mwtest/hostile:{uuid.uuid4().hex[:8]}"
    ia.load(docker_client, ia.save_archive([layer], repo_tag=tag), tag)
    config = write_config(tmp_path, extra="max_file_mb = 8\n")  # lands in the [watch] table
    started = time.monotonic()
    proc, found = run_cli(tag, "--json", "--config", str(config), "--timeout", "120", cwd=work, env={"TMPDIR": str(tmp)})
    assert time.monotonic() - started < 150 and proc.returncode == 1, proc.stderr
    paths = {a["file"]["path"] for a in found if "file" in a}
    assert {str(canary) + "/pwned", "/usr/sbin/kthreadd"} <= paths
    assert "/opt/big.bin" in proc.stderr and "only in part" in proc.stderr
    assert list(canary.iterdir()) == [] and list(work.iterdir()) == [] and list(tmp.iterdir()) == []


def test_image_docker_cannot_export_is_an_error(docker_client, tmp_path):
    """An image with a '../' member loads but Docker cannot export it: exit 2 with a clear message, quickly."""
    tag = f"mwtest/traversal:{uuid.uuid4().hex[:8]}"
    layer = ia.layer_tar([ia.reg(f"../mw-evil-{uuid.uuid4().hex[:8]}", b"#!/bin/sh\n", 0o755)])
    ia.load(docker_client, ia.save_archive([layer], repo_tag=tag), tag)
    started = time.monotonic()
    proc, _ = run_cli(tag, "--json", "--timeout", "60")
    assert proc.returncode == 2 and "could not export" in proc.stderr and proc.stdout == ""
    assert time.monotonic() - started < 90


def test_missing_image_and_unreachable_docker(docker_client, tmp_path):
    """No such image, or no Docker at the configured URL: exit 2 with a message."""
    proc, _ = run_cli(f"mwtest/none:{uuid.uuid4().hex[:8]}", "--json")
    assert proc.returncode == 2 and "no local image" in proc.stderr
    config = write_config(tmp_path, extra=f'[docker]\nurl = "unix://{tmp_path}/no.sock"\n')
    proc, _ = run_cli("busybox", "--config", str(config))
    assert proc.returncode == 2 and "not reachable" in proc.stderr


def test_sweep_alert_of_lookalike_container_has_image_evidence(docker_client, docker_image, docker_run, helper_bins,
                                                               tmp_path):
    """A thanhtudo/openjdk container running the miner: the sweep's alert for it includes the image evidence."""
    name = dao_image(docker_image, helper_bins, "thanhtudo/openjdk:latest")
    container = docker_run(name)
    pid = wait_for_process(container, "fakeminer", timeout=30)
    run = sweep("--json", "--config", str(write_config(tmp_path)))
    assert run.code == 1, run.stderr
    a = run.for_pid(pid)
    assert a is not None and a["container"]["image"]["name"] == name
    details = [e["detail"] for e in a["minerwatch"]["evidence"] if e["signal"] == "image"]
    assert any("dao.py" in d for d in details) and any("thanhtudo" in d for d in details)


def test_cli_timeout_default_is_the_scanner_default():
    """The CLI's --timeout default (kept apart to keep YARA out of CLI start-up) is the scanner's."""
    from agent.cli import scan_image_cmd
    from agent.images.scanner import DEFAULT_TIMEOUT_S

    assert scan_image_cmd.DEFAULT_TIMEOUT_S == DEFAULT_TIMEOUT_S


def test_bench_runs(tmp_path):
    """bench/scan_image.py prints MB/s and the ratio to sha256sum (small run)."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "scan_image.py"), "--size-mib", "8", "--repeat", "1"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "MB/s" in proc.stdout and "ratio" in proc.stdout


XMRIG_START = (b"#!/bin/sh\n# starts the miner beside its config\ncd /app\n"
               b"exec ./xmrig -o stratum+tcp://pool.supportxmr.com:3333 -u " + TEST_WALLET.encode() + b" -k\n")
XMRIG_CONFIG = (b'{\n  "autosave": true,\n  "cpu": {"enabled": true},\n  "pools": [\n    {"url": "pool.supportxmr.com:443", '
                b'"user": "' + TEST_WALLET.encode() + b'", "tls": true}\n  ]\n}\n')


def test_entrypoint_script_and_config_json_in_layers(docker_client, docker_image):
    """An image whose entrypoint script runs ./xmrig -o stratum+tcp://... -u WALLET next to a config.json naming
    the pool (no miner binary in it): both files are read as text, high or above, pool and wallet named."""
    name = "mwtest/xmrig-start:1"
    docker_image(name, {"/app/start.sh": (XMRIG_START, 0o755), "/app/config.json": (XMRIG_CONFIG, 0o644),
                        "/app/README": (b"nothing to see\n", 0o644)}, entrypoint='["/app/start.sh"]', cmd="[]")
    proc, found = run_cli(name, "--json")
    assert proc.returncode == 1, proc.stderr
    by_path = {a["file"]["path"]: a for a in found if "file" in a}
    assert set(by_path) == {"/app/start.sh", "/app/config.json"}
    for path, a in by_path.items():
        assert a["minerwatch"]["severity"] in ("high", "critical"), (path, a["minerwatch"])
        details = " ".join(e["detail"] for e in a["minerwatch"]["evidence"])
        assert "pool.supportxmr.com" in details and TEST_WALLET[:40] in details, details
        assert a["destination"]["domain"] == "pool.supportxmr.com"
        assert a["minerwatch"]["image"]["layer_index"] >= 1
    human = run_cli(name)[0]
    assert human.returncode == 1 and "/app/start.sh" in human.stdout and "/app/config.json" in human.stdout


def test_config_files_without_miner_text_stay_clean(sig):
    """Ordinary scripts and JSON/YAML files in a layer are read as text and stay clean."""
    files = {"/etc/app/settings.json": b'{"url": "https://example.com:8443/api", "user": "admin", "pool": 4}\n',
             "/etc/app/db.yaml": b"pool: 10\nhost: db.internal:5432\nuser: app\n",
             "/usr/local/bin/run.sh": b"#!/bin/sh\nexec /usr/bin/app -c /etc/app/settings.json -o out.log\n"}
    layer = ia.layer_tar([ia.reg(p[1:], d, 0o755 if p.endswith(".sh") else 0o644) for p, d in files.items()])
    archive = ia.save_archive([layer])
    result = scan(sig, archive)
    assert result.findings == [], [(f.file.path, f.evidence) for f in result.findings]
    assert result.files == 3 and result.bytes_hashed == sum(len(d) for d in files.values())
