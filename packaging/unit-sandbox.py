#!/usr/bin/python3
"""Run a command under the process limits of systemd/minerwatch.service, without systemd.

    sudo packaging/unit-sandbox.py /usr/lib/minerwatch/minerwatch sweep --json
    sudo packaging/unit-sandbox.py dist/minerwatch-dir/minerwatch run --config my.toml

Reads the unit and applies, before exec: the SystemCallFilter= lines (allow lists minus
~deny lists, expanded with `systemd-analyze syscall-filter`; a refused call fails with
SystemCallErrorNumber=), the CapabilityBoundingSet=, NoNewPrivileges=, MemoryDenyWriteExecute=
(as PR_SET_MDWE, Linux 6.3+) and UMask=. The mount settings (ProtectSystem=, ReadWritePaths=,
ProtectKernelTunables=...) are not emulated. A way to check, on a machine where no systemd
runs (containers, CI), that the daemon still works with a changed filter or capability list.

Needs root, Debian's python3-seccomp (libseccomp bindings for the system python3) and
systemd-analyze (package systemd).
"""
from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import sys
from pathlib import Path

import seccomp

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "minerwatch.service"
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 24, 38, 65, 1
CAP_LAST = 63


def settings(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def expand(name: str, seen: set[str]) -> set[str]:
    """The system calls of ``name`` (a call or an @group, groups expanded recursively)."""
    if not name.startswith("@"):
        return {name}
    if name in seen:
        return set()
    seen.add(name)
    out = subprocess.run(["systemd-analyze", "syscall-filter", name], capture_output=True, text=True,
                         check=True).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        word = line.strip()
        if word and not word.startswith("#"):
            calls |= expand(word, seen)
    return calls


def allowed_calls(lines: list[str]) -> set[str]:
    allow: set[str] = set()
    for line in lines:
        deny = line.startswith("~")
        calls = set().union(*(expand(w, set()) for w in line.lstrip("~").split()))
        allow = allow - calls if deny else allow | calls
    return allow


CAPABILITIES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
    "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO "
    "SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME "
    "SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG "
    "WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE"
).split()  # in kernel order: CAP_CHOWN is 0


def capability_numbers(names: list[str]) -> set[int]:
    return {CAPABILITIES.index(n.upper().removeprefix("CAP_")) for n in names}


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit(__doc__)
    s = settings(UNIT)
    libc = ctypes.CDLL(None, use_errno=True)
    keep = capability_numbers(" ".join(s.get("CapabilityBoundingSet", [])).split())
    for cap in range(CAP_LAST + 1):
        if cap not in keep:
            libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # EINVAL past the kernel's last cap: fine
    if s.get("NoNewPrivileges") == ["yes"]:
        libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    if s.get("MemoryDenyWriteExecute") == ["yes"] and libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0):
        sys.exit("PR_SET_MDWE failed: MemoryDenyWriteExecute= needs Linux 6.3+ here")
    if "UMask" in s:
        os.umask(int(s["UMask"][-1], 8))
    error = getattr(errno, s.get("SystemCallErrorNumber", ["EPERM"])[-1])
    filt = seccomp.SyscallFilter(defaction=seccomp.ERRNO(error))
    allowed = 0
    for call in sorted(allowed_calls(s.get("SystemCallFilter", []))):
        try:
            filt.add_rule(seccomp.ALLOW, call)
            allowed += 1
        except (RuntimeError, ValueError, OSError):  # a call this architecture does not have
            continue
    print(f"unit-sandbox: {allowed} system calls, capabilities {sorted(keep)}", file=sys.stderr)
    filt.load()
    os.execv(argv[1], argv[1:])


if __name__ == "__main__":
    main(sys.argv)
