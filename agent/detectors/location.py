"""Where the executable lives, and names that pretend to be something else."""

from __future__ import annotations

import re

from agent.detectors.base import Context
from agent.model import Evidence, ProcessSnapshot

ID = "location"
VERSION = 1
TITLE = "Suspicious executable location or masquerade"

_RULE = f"{ID}@{VERSION}"
_TEMP_DIRS = ("/tmp/", "/var/tmp/", "/dev/shm/", "/run/shm/")
# Names the kernel gives its own threads; a process with an executable file never has them.
_KERNEL_THREAD_NAME = re.compile(
    r"^\[?(?:"
    r"(?:kworker|ksoftirqd|migration|watchdog|cpuhp|irq|idle_inject|jbd2|scsi_eh|kblockd)/[\w:.+-]*"
    r"|kworker|kthreadd|kswapd\d+|khugepaged|kcompactd\d+|kdevtmpfs|oom_reaper|kauditd|khungtaskd"
    r"|rcu_(?:sched|bh|preempt|gp|par_gp|tasks\w*)|ksmd|kthrotld|writeback|netns|kintegrityd"
    r")\]?$"
)

# Daemon names miners borrow; the real ones always run from the system directories.
_SYSTEM_NAMES = frozenset({
    "systemd", "systemd-journal", "systemd-journald", "systemd-logind", "systemd-udevd", "sshd", "cron", "crond",
    "rsyslogd", "dbus-daemon", "containerd", "dockerd", "init", "kthreadd", "agetty", "polkitd", "udevd",
})
_SYSTEM_DIRS = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/opt/")
_MEMFD = "/memfd:"  # what /proc/PID/exe says of an executable run from memfd_create (fexecve)


def detect(proc: ProcessSnapshot, ctx: Context) -> list[Evidence]:
    out: list[Evidence] = []
    if proc.is_kernel_thread:
        return out
    if proc.exe.startswith(_TEMP_DIRS):
        out.append(Evidence("location", f"executable runs from a temporary directory any user can write to: {proc.exe} "
                                        "(where droppers put miners; weak alone)", 10, _RULE, strong=False))
    elif proc.program.startswith(_TEMP_DIRS):
        out.append(Evidence("location", f"program {proc.program} (run by the loader {proc.exe}) lies in a temporary "
                                        "directory", 10, _RULE, strong=False))
    if proc.program:
        # ld.so PROGRAM: a way to run a binary that hash and name checks of /proc/PID/exe never see
        out.append(Evidence("location", f"program {proc.program} is run by the dynamic loader {proc.exe}", 5, _RULE,
                            strong=False))
    if proc.exe.startswith(_MEMFD):
        out.append(Evidence("location", f"fileless executable: it runs from an in-memory file ({proc.exe[1:]}), with "
                                        "nothing on disk to scan; droppers do this to hide a miner (weak alone)",
                            15, _RULE, strong=False))
    elif proc.exe_deleted:
        out.append(Evidence("location", f"executable {proc.exe} was deleted from disk while it runs (droppers delete a "
                                        "miner after starting it; weak alone)", 15, _RULE, strong=False))
    if proc.exe:
        runs = proc.program or proc.exe  # what really runs, behind a loader too
        argv0 = proc.cmdline[0] if proc.cmdline else ""
        for shown in dict.fromkeys((proc.name, argv0)):
            if shown and _KERNEL_THREAD_NAME.match(shown):
                out.append(
                    Evidence("masquerade", f"kernel-thread name {shown!r} on a process running {runs}", 35, _RULE)
                )
                break
        else:
            if proc.name in _SYSTEM_NAMES and not runs.startswith(_SYSTEM_DIRS):
                out.append(
                    Evidence("masquerade", f"system daemon name {proc.name!r} on {runs}, outside the system directories", 25, _RULE)
                )
    return out
