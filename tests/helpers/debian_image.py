"""A minimal Debian 12 (bookworm) test image, built offline from Debian packages and cached.

``debootstrap --variant=minbase`` lays out a bookworm root with systemd (as /sbin/init),
rsyslog, logrotate and procps, plus the few shared libraries the host's Python and the venv's
compiled modules load (the agent itself is never installed in the image: tests mount the
host's Python and the checkout read-only at their own paths). The root is then made fit to
boot systemd as PID 1 in a container (units that need hardware, a console or D-Bus masked;
rsyslog not started by default), packed with ``tar --numeric-owner`` and ``docker import``-ed.

Cache, so the build happens once per machine (1-2 minutes, most of it downloading and
unpacking ~150 .debs; the suite runs it at most once):
  - the image ``minerwatch-test/debian12:<recipe hash>``, labelled
    ``minerwatch.test.content=<recipe hash>``, is reused while it exists;
  - else the tarball ``<cache>/debian12-<recipe hash>.tar`` is imported again (seconds);
  - else debootstrap runs (the .debs are kept in ``<cache>/debs`` for the next rebuild).
``<cache>`` is ``$MINERWATCH_TEST_CACHE`` or /var/cache/minerwatch-test. The recipe hash covers
every input that shapes the root: suite, variant, packages, architecture and the source of
``_customise``. The mirror is not part of it: it is read from this machine's apt sources
(the first ``deb`` entry for bookworm ``main``), or ``$MINERWATCH_TEST_DEBIAN_MIRROR``.

One builder at a time per machine (a flock), like ``images.import_image``.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import inspect
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .images import CONTENT_LABEL

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = (
    "systemd", "systemd-sysv", "rsyslog", "logrotate", "procps",
    # What the host's Python and its extension modules load that minbase may lack
    # (ssl/hashlib, ctypes, bz2, lzma, uuid, pyexpat); libstdc++ (yara, re2) comes with apt.
    "libssl3", "libffi8", "libbz2-1.0", "liblzma5", "libuuid1", "libexpat1",
)
RECIPE_VERSION = "1"
REPOSITORY = "minerwatch-test/debian12"
LOCK_PATH = "/tmp/minerwatch-test-debian-image.lock"

# Units that cannot work (no udev, no console, no kernel config in a container) or need
# D-Bus (not installed): masked so the boot reaches multi-user.target without failed units.
MASKED = (
    "systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service", "systemd-udev-settle.service", "systemd-modules-load.service",
    "systemd-remount-fs.service", "systemd-firstboot.service", "systemd-logind.service",
    "sys-kernel-config.mount", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount", "dev-hugepages.mount", "dev-mqueue.mount",
    "getty@tty1.service", "console-getty.service", "getty.target",
    "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_reap.service", "e2scrub_all.timer",
    "fstrim.timer", "systemd-tmpfiles-clean.timer", "logrotate.timer", "dpkg-db-backup.timer",
)


class DebianImageUnavailable(RuntimeError):
    """The image cannot be built here (no debootstrap, not root, no bookworm mirror)."""


@dataclass(frozen=True)
class DebianImage:
    tag: str
    digest: str
    tarball: Path
    how: str            # "reused image", "imported cached tarball" or "built"
    seconds: float      # how long getting it took in this call
    build_seconds: float | None  # how long debootstrap + packing took when it was built


def cache_dir() -> Path:
    return Path(os.environ.get("MINERWATCH_TEST_CACHE") or "/var/cache/minerwatch-test")


def architecture() -> str:
    try:
        out = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)


def _customise(root: Path) -> None:
    """Make the debootstrapped root bootable by systemd in a container, and small."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*_*", "var/cache/apt/*.bin"):
        for p in glob.glob(str(root / pattern)):
            os.unlink(p)
    # An empty machine-id: systemd makes a fresh one at every boot (each container its own).
    (root / "etc/machine-id").write_text("")
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_symlink() or dbus_id.exists():
        dbus_id.unlink()
    (root / "etc/hostname").write_text("minerwatch-test\n")
    system = root / "etc/systemd/system"
    for unit in MASKED:
        link = system / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    # rsyslog only where a test starts it (tests/test_rsyslog.py runs rsyslogd -n itself).
    for link in (system / "multi-user.target.wants/rsyslog.service", system / "syslog.service"):
        if link.is_symlink():
            link.unlink()
    default = system / "default.target"
    if default.is_symlink() or default.exists():
        default.unlink()
    default.symlink_to("/lib/systemd/system/multi-user.target")
    # The journal in memory only (/run is a tmpfs in the test containers): nothing to flush.
    conf = root / "etc/systemd/journald.conf.d"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "minerwatch-test.conf").write_text("[Journal]\nStorage=volatile\nRateLimitBurst=0\n")


def recipe() -> dict:
    return {
        "version": RECIPE_VERSION, "suite": SUITE, "variant": VARIANT, "packages": sorted(PACKAGES),
        "arch": architecture(), "masked": sorted(MASKED),
        "customise": inspect.getsource(_customise),
    }


def recipe_digest() -> str:
    return hashlib.sha256(json.dumps(recipe(), sort_keys=True).encode()).hexdigest()[:16]


def image_tag(digest: str | None = None) -> str:
    return f"{REPOSITORY}:{digest or recipe_digest()}"


def find_mirror() -> tuple[str, str | None]:
    """(mirror URI, keyring or None) for bookworm main from this machine's apt sources."""
    env = os.environ.get("MINERWATCH_TEST_DEBIAN_MIRROR")
    if env:
        return env, None
    # deb822 (*.sources): stanzas of Types/URIs/Suites/Components/Signed-By.
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if fields.get("enabled", "yes").lower() == "no":
                continue
            if ("deb" in fields.get("types", "").split() and SUITE in fields.get("suites", "").split()
                    and "main" in fields.get("components", "").split() and fields.get("uris")):
                keyring = fields.get("signed-by")
                return fields["uris"].split()[0], keyring if keyring and keyring.startswith("/") else None
    # one-line format (sources.list, *.list): deb [opts] URI SUITE COMPONENTS...
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
            if len(line) >= 4 and line[0] == "deb" and line[2] == SUITE and "main" in line[3:]:
                return line[1], None
    raise DebianImageUnavailable(f"no 'deb' source for {SUITE} main in /etc/apt/sources.list*; "
                                 "set MINERWATCH_TEST_DEBIAN_MIRROR")


def check_buildable() -> str:
    """Path of debootstrap; DebianImageUnavailable saying why not."""
    path = shutil.which("debootstrap") or next(
        (p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.access(p, os.X_OK)), None)
    if not path:
        raise DebianImageUnavailable("debootstrap is not installed (scripts/install-test-deps.sh installs it)")
    if os.geteuid() != 0:
        raise DebianImageUnavailable("debootstrap needs root")
    find_mirror()
    return path


def _image_digest(client, tag: str) -> str | None:
    import docker

    try:
        return (client.images.get(tag).labels or {}).get(CONTENT_LABEL)
    except docker.errors.ImageNotFound:
        return None


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt.startswith(prefix) or mnt == prefix[:-1]:
                found.append(mnt)
    return found


def _remove_root(root: Path) -> None:
    """Removes a build root; never crosses into a mount (debootstrap mounts /proc and /sys
    inside while it runs and may leave them when killed)."""
    if not root.exists():
        return
    for mnt in sorted(_mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", mnt], capture_output=True)
    if _mounts_under(root):
        raise RuntimeError(f"mounts left under {root}: not removing it")
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=True)


def _build_tarball(tarball: Path, log=print) -> float:
    debootstrap = check_buildable()
    mirror, keyring = find_mirror()
    cache = tarball.parent
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    root = cache / f"build-{tarball.stem}-{os.getpid()}"
    _remove_root(root)
    start = time.monotonic()
    cmd = [debootstrap, f"--variant={VARIANT}", f"--arch={architecture()}", "--components=main",
           f"--include={','.join(PACKAGES)}", f"--cache-dir={debs}"]
    if keyring and os.path.exists(keyring):
        cmd.append(f"--keyring={keyring}")
    cmd += [SUITE, str(root), mirror]
    log(f"debian test image: debootstrap {SUITE} ({len(PACKAGES)} packages) into {root}")
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            logfile = root / "debootstrap/debootstrap.log"
            detail = logfile.read_text(errors="replace")[-3000:] if logfile.exists() else ""
            raise RuntimeError(f"debootstrap failed ({res.returncode}): {res.stderr[-3000:]}\n{detail}")
        _customise(root)
        tmp = tarball.with_suffix(".tar.tmp")
        subprocess.run(["tar", "--numeric-owner", "-C", str(root), "-cf", str(tmp), "."],
                       check=True, capture_output=True)
        os.replace(tmp, tarball)
    finally:
        _remove_root(root)
    seconds = time.monotonic() - start
    tarball.with_suffix(".json").write_text(json.dumps({
        "recipe": recipe(), "build_seconds": round(seconds, 1), "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=1))
    return seconds


def _import(client, tarball: Path, tag: str, digest: str) -> None:
    repo, ver = tag.rsplit(":", 1)
    changes = [
        'CMD ["/sbin/init"]', "ENV container=docker",
        f'LABEL minerwatch.test="1" {CONTENT_LABEL}="{digest}"',
    ]
    client.api.import_image_from_file(str(tarball), repository=repo, tag=ver, changes=changes)
    deadline = time.monotonic() + 60
    while _image_digest(client, tag) != digest:
        if time.monotonic() > deadline:
            raise RuntimeError(f"docker import of {tarball} did not produce {tag}")
        time.sleep(0.2)


def ensure_image(client, log=print) -> DebianImage:
    """The Debian 12 test image's tag, built (debootstrap), imported (cached tarball) or reused."""
    start = time.monotonic()
    digest = recipe_digest()
    tag = image_tag(digest)
    tarball = cache_dir() / f"debian12-{digest}.tar"

    def built_in() -> float | None:
        try:
            return json.loads(tarball.with_suffix(".json").read_text()).get("build_seconds")
        except (OSError, ValueError):
            return None

    if _image_digest(client, tag) == digest:
        return DebianImage(tag, digest, tarball, "reused image", time.monotonic() - start, built_in())
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(LOCK_PATH, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _image_digest(client, tag) == digest:  # another session built it while we waited
            return DebianImage(tag, digest, tarball, "reused image", time.monotonic() - start, built_in())
        how = "imported cached tarball"
        if not tarball.exists():
            secs = _build_tarball(tarball, log)
            log(f"debian test image: debootstrap + pack took {secs:.1f} s ({tarball}, "
                f"{tarball.stat().st_size >> 20} MiB)")
            how = "built"
            for stale in cache_dir().glob("debian12-*.*"):  # tarballs of older recipes
                if not stale.name.startswith(f"debian12-{digest}."):
                    stale.unlink(missing_ok=True)
        _import(client, tarball, tag, digest)
    took = time.monotonic() - start
    log(f"debian test image {tag}: {how}, {took:.1f} s in all")
    return DebianImage(tag, digest, tarball, how, took, built_in())


# ----------------------------------------------------------------- running the agent inside


def cgroup_layout() -> str:
    """"v2" (unified only), "hybrid" (v1 controllers plus a cgroup2 at /sys/fs/cgroup/unified) or "v1"."""
    if os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "v2"
    return "hybrid" if os.path.isdir("/sys/fs/cgroup/unified") else "v1"


def agent_volumes() -> dict:
    """Read-only binds that make the checkout's agent runnable inside the image at the host's own
    paths: the base Python (``sys.base_prefix``), the venv in use and the checkout."""
    import sys

    from .containers import REPO_ROOT

    paths: list[str] = []
    for p in sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), str(REPO_ROOT)}):
        if not any(p == q or p.startswith(q + "/") for q in paths):
            paths.append(p)
    return {p: {"bind": p, "mode": "ro"} for p in paths}


def venv_python() -> str:
    import sys

    return os.path.join(sys.prefix, "bin", "python")


def wrapper_script() -> bytes:
    """/usr/bin/minerwatch inside the image: the venv's ``python -m agent``, with this checkout
    first on the path (the venv's editable install may point at another one)."""
    from .containers import REPO_ROOT

    return (f'#!/bin/sh\nPYTHONPATH={REPO_ROOT}\nexport PYTHONPATH\n'
            f'exec {venv_python()} -m agent "$@"\n').encode()


@contextlib.contextmanager
def systemd_container(client, image: str, *, name_prefix: str = "mwtest-systemd",
                      volumes: dict | None = None) -> Iterator:
    """A container of ``image`` booting systemd as PID 1, removed when the block ends (also on
    errors; it carries this session's labels, so the session's leak guard sees it too).

    ``--privileged`` does not work on these hosts; instead: every capability but
    CAP_SYS_RESOURCE, no seccomp or AppArmor profile, ``systempaths=unconfined`` (no masked or
    read-only /proc and /sys paths: the docker SDK has no option for it, so the host config is
    given to the API directly), tmpfs /run and /run/lock, ``--network none``. With cgroup
    v1/hybrid (Docker's host cgroup namespace) the host's tree is bound read-write so systemd
    makes its units' cgroups below the container's own; with cgroup v2 the host cgroup
    namespace is asked for explicitly."""
    import uuid

    from . import containers

    binds = {"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}, **agent_volumes(), **(volumes or {})}
    hc = client.api.create_host_config(
        binds=binds, network_mode="none",
        cap_add=["ALL"], cap_drop=["SYS_RESOURCE"],
        security_opt=["seccomp=unconfined", "apparmor=unconfined"],
        tmpfs={"/run": "", "/run/lock": ""},
        cgroupns="host" if cgroup_layout() == "v2" else None,
    )
    hc["MaskedPaths"], hc["ReadonlyPaths"] = [], []  # --security-opt systempaths=unconfined
    name = f"{name_prefix}-{uuid.uuid4().hex[:8]}"
    labels = {containers.LABEL: "1", containers.SESSION_LABEL: containers.SESSION_ID}
    created = client.api.create_container(image, name=name, labels=labels, host_config=hc,
                                          stop_signal="SIGRTMIN+3", volumes=[b["bind"] for b in binds.values()])
    try:
        client.api.start(created["Id"])
        c = client.containers.get(created["Id"])
        yield c
    finally:
        containers.remove_container(client, created["Id"])


def put_files(container, files: dict[str, tuple[bytes, int]]) -> None:
    """Writes ``{"/abs/path": (data, mode)}`` into a (running) container, owned by root,
    creating parent directories (0755)."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        seen: set[str] = set()
        for path, (data, mode) in sorted(files.items()):
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in seen:
                    seen.add(d)
                    ti = tarfile.TarInfo(d)
                    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
                    tar.addfile(ti)
            ti = tarfile.TarInfo("/".join(parts))
            ti.size, ti.mode, ti.mtime = len(data), mode, int(time.time())
            tar.addfile(ti, io.BytesIO(data))
    if not container.put_archive("/", buf.getvalue()):
        raise RuntimeError(f"could not write {sorted(files)} into {container.name}")


def tree_files(src: Path, dest: str) -> dict[str, tuple[bytes, int]]:
    """The regular files under ``src`` as put_files entries under ``dest`` (no __pycache__)."""
    out = {}
    for p in sorted(src.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            out[f"{dest}/{p.relative_to(src)}"] = (p.read_bytes(), 0o644)
    return out


def run(container, *argv: str, check: bool = False, env: dict | None = None) -> tuple[int, str]:
    """Runs ``argv`` in the container (no shell): (exit code, stdout+stderr as text)."""
    res = container.exec_run(list(argv), environment=env, demux=False)
    text = (res.output or b"").decode("utf-8", "replace")
    if check and res.exit_code != 0:
        raise AssertionError(f"{' '.join(argv)} exited {res.exit_code} in {container.name}:\n{text[-4000:]}")
    return res.exit_code, text


def image_for_tests(client, request) -> DebianImage:
    """The image for a test session: skipped (with the reason) only when it cannot be built
    here, and failed instead where Docker tests are required (CI, MINERWATCH_REQUIRE_DOCKER=1).
    How long it took is printed on the terminal."""
    import pytest

    from .containers import docker_required

    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def log(msg: str) -> None:
        if reporter is None:
            return
        if capture is None:
            reporter.write_line(f"[debian image] {msg}")
            return
        with capture.global_and_fixture_disabled():  # shown even while output is captured
            reporter.write_line(f"[debian image] {msg}")

    if _image_digest(client, image_tag()) != recipe_digest() and not (cache_dir() / f"debian12-{recipe_digest()}.tar").exists():
        try:
            check_buildable()
        except DebianImageUnavailable as exc:
            if docker_required():
                pytest.fail(f"the Debian 12 test image is required here but cannot be built: {exc}", pytrace=False)
            pytest.skip(f"Debian 12 test image cannot be built: {exc}")
    img = ensure_image(client, log)
    if img.how == "reused image" and request.config.getoption("verbose") > 0:
        built = f" (debootstrap + pack took {img.build_seconds:.0f} s when it was built)" if img.build_seconds else ""
        log(f"{img.tag}: reused{built}")
    return img


def wait_for(what: str, fn, timeout: float = 20.0, every: float = 0.2):
    """Poll ``fn`` inside a test container until it returns something truthy (returned); AssertionError
    naming ``what`` and the last value after ``timeout``. (Exceptions propagate: a broken probe is a
    failure, not a "not yet", unlike procs.wait_until.)"""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")
