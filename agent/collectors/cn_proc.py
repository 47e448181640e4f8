"""The process events connector's wire format (``linux/cn_proc.h``), packed and unpacked with ``struct``.

Pure: no socket here (``proc_connector`` owns the socket and its reader thread). A datagram
from the kernel holds netlink messages (``nlmsghdr``), each carrying a connector message
(``cn_msg``) whose payload is one ``proc_event``. ``parse_messages`` decodes a datagram into
events, acknowledgements and ``Problem``s and never raises; ``control_message`` builds the
``PROC_CN_MCAST_LISTEN`` / ``IGNORE`` requests (with the 6.6+ event filter).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from agent.events import ExecEvent

NETLINK_CONNECTOR = 11
CN_IDX_PROC = CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN, PROC_CN_MCAST_IGNORE = 1, 2
NLMSG_NOOP, NLMSG_ERROR, NLMSG_DONE, NLMSG_OVERRUN = 1, 2, 3, 4
PROC_EVENT_NONE, PROC_EVENT_FORK, PROC_EVENT_EXEC, PROC_EVENT_EXIT = 0, 1, 2, 0x80000000

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_CN_MSG = struct.Struct("=IIIIHH")  # id.idx, id.val, seq, ack, len, flags
_EVENT_HEAD = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
_ACK = struct.Struct("=I")  # err
_EXEC = struct.Struct("=ii")  # process_pid, process_tgid
_FORK = struct.Struct("=iiii")  # parent_pid, parent_tgid, child_pid, child_tgid
_EXIT = struct.Struct("=iiII")  # process_pid, process_tgid, exit_code, exit_signal (parent_* follow)

# One exec event alone in its datagram, as the kernel sends each one: nlmsghdr, cn_msg, event head, exec.
_LONE_EXEC = struct.Struct("=IHHII" "IIIIHH" "IIQ" "ii")

_LAYOUTS = {PROC_EVENT_NONE: _ACK, PROC_EVENT_EXEC: _EXEC, PROC_EVENT_FORK: _FORK, PROC_EVENT_EXIT: _EXIT}

@dataclass(frozen=True, slots=True)
class ForkEvent:
    parent_pid: int
    parent_tgid: int
    child_pid: int
    child_tgid: int
    timestamp_ns: int = 0


@dataclass(frozen=True, slots=True)
class ExitEvent:
    pid: int
    tgid: int
    exit_code: int
    exit_signal: int
    timestamp_ns: int = 0


@dataclass(frozen=True, slots=True)
class Ack:
    """The kernel's answer to a LISTEN/IGNORE: ``ack`` is the request's ack field plus one."""

    err: int
    ack: int


@dataclass(frozen=True, slots=True)
class OtherEvent:
    """A process event we do not decode (uid, gid, sid, ptrace, comm, coredump, unknown)."""

    what: int
    timestamp_ns: int = 0


@dataclass(frozen=True, slots=True)
class Problem:
    """Not an event: ``kind`` is "malformed" (bad bytes), "overrun" (NLMSG_OVERRUN: data was lost)
    or "netlink_error" (NLMSG_ERROR; ``detail`` holds the errno)."""

    kind: str
    detail: str = ""


Message = ExecEvent | ForkEvent | ExitEvent | Ack | OtherEvent | Problem


def parse_messages(buf: bytes) -> list[Message]:
    """Every netlink message in one datagram, decoded; bad input becomes a ``Problem``, never raises."""
    end = len(buf)
    if end >= _LONE_EXEC.size:  # the common case in one unpack: the same answer as the general walk below
        (length, mtype, _f, _s, _p, idx, val, _seq, _ack, dlen, _fl, what, _cpu, ts, pid, tgid
         ) = _LONE_EXEC.unpack_from(buf)
        if (mtype == NLMSG_DONE and what == PROC_EVENT_EXEC and idx == CN_IDX_PROC and val == CN_VAL_PROC
                and length <= end <= (length + 3) & ~3 and dlen >= _EVENT_HEAD.size + _EXEC.size
                and _NLMSGHDR.size + _CN_MSG.size + dlen <= length):
            return [ExecEvent(pid=pid, tgid=tgid, timestamp_ns=ts)]
    return _walk(buf)


def _walk(buf: bytes) -> list[Message]:
    out: list[Message] = []
    off, end = 0, len(buf)
    while end - off >= _NLMSGHDR.size:
        length, mtype, _flags, _seq, _pid = _NLMSGHDR.unpack_from(buf, off)
        if length < _NLMSGHDR.size or off + length > end:
            out.append(Problem("malformed", f"netlink length {length} at offset {off}, {end - off} bytes left"))
            return out
        body, stop = off + _NLMSGHDR.size, off + length
        if mtype == NLMSG_ERROR:
            if stop - body < 4:
                out.append(Problem("malformed", "truncated NLMSG_ERROR"))
            elif err := -struct.unpack_from("=i", buf, body)[0]:
                out.append(Problem("netlink_error", str(err)))
        elif mtype == NLMSG_OVERRUN:
            out.append(Problem("overrun"))
        elif mtype != NLMSG_NOOP:  # connector payloads arrive as NLMSG_DONE
            out.append(_parse_connector(buf, body, stop))
        off += (length + 3) & ~3
    if 0 < end - off:
        out.append(Problem("malformed", f"{end - off} trailing bytes"))
    return out


def _parse_connector(buf: bytes, start: int, stop: int) -> Message:
    if stop - start < _CN_MSG.size:
        return Problem("malformed", "truncated cn_msg header")
    idx, val, _seq, ack, dlen, _flags = _CN_MSG.unpack_from(buf, start)
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC):
        return Problem("malformed", f"connector id {idx}.{val} is not process events")
    data = start + _CN_MSG.size
    if data + dlen > stop or dlen < _EVENT_HEAD.size:
        return Problem("malformed", f"proc_event of {dlen} bytes in {stop - data}")
    what, _cpu, ts = _EVENT_HEAD.unpack_from(buf, data)
    body, room = data + _EVENT_HEAD.size, dlen - _EVENT_HEAD.size
    layout = _LAYOUTS.get(what)
    if layout is None:
        return OtherEvent(what, ts)
    if room < layout.size:
        return Problem("malformed", f"event {what:#x} truncated: {room} of {layout.size} bytes")
    f = layout.unpack_from(buf, body)
    if what == PROC_EVENT_EXEC:
        return ExecEvent(pid=f[0], tgid=f[1], timestamp_ns=ts)
    if what == PROC_EVENT_FORK:
        return ForkEvent(*f, timestamp_ns=ts)
    if what == PROC_EVENT_EXIT:
        return ExitEvent(*f, timestamp_ns=ts)
    return Ack(err=f[0], ack=ack)


# Classic BPF (``linux/filter.h``) run by the kernel on each datagram before it is queued to us.
_BPF_LD_H_ABS, _BPF_LD_W_ABS, _BPF_JEQ_K, _BPF_RET_K = 0x28, 0x20, 0x15, 0x06
_SOCK_FILTER = struct.Struct("=HBBI")  # code, jt, jf, k


def _wire(value: int, fmt: str) -> int:
    """``value`` as a BPF absolute load sees it: host-order bytes read in network order."""
    return struct.unpack(">" + fmt, struct.pack("=" + fmt, value))[0]


def exec_filter() -> bytes:
    """A socket filter keeping what the reader uses: exec events, acknowledgements and anything that is not
    a process event (netlink errors, overruns, foreign payloads: still counted). Forks, exits and the
    uid/gid/sid/ptrace/comm/coredump events are dropped in the kernel, before they are copied to us: what
    kernels before 6.6 send whatever ``control_message`` asks."""
    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return _SOCK_FILTER.pack(code, jt, jf, k)

    body, event = _NLMSGHDR.size, _NLMSGHDR.size + _CN_MSG.size
    return b"".join([
        op(_BPF_LD_H_ABS, 4),                                            # nlmsg_type
        op(_BPF_JEQ_K, _wire(NLMSG_DONE, "H"), jt=0, jf=6),              # not a connector payload: keep
        op(_BPF_LD_W_ABS, body),                                         # cn_msg id.idx
        op(_BPF_JEQ_K, _wire(CN_IDX_PROC, "I"), jt=0, jf=4),
        op(_BPF_LD_W_ABS, event),                                        # proc_event.what
        op(_BPF_JEQ_K, _wire(PROC_EVENT_EXEC, "I"), jt=2, jf=0),
        op(_BPF_JEQ_K, _wire(PROC_EVENT_NONE, "I"), jt=1, jf=0),        # the answer to LISTEN
        op(_BPF_RET_K, 0),                                               # drop
        op(_BPF_RET_K, 0xFFFFFFFF),                                      # keep (whole)
    ])


def control_message(op: int, ack: int, event_filter: int | None = None) -> bytes:
    payload = struct.pack("=I", op) if event_filter is None else struct.pack("=II", op, event_filter)
    cn = _CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, ack, len(payload), 0) + payload
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(cn), NLMSG_DONE, 0, 0, 0) + cn
