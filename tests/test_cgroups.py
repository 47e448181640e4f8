"""Container id and runtime from /proc/PID/cgroup text, cgroup v1 and v2, every runtime we know."""

from __future__ import annotations

import os

import pytest

from agent.collectors.cgroups import container_from_path, parse_cgroup

ID = "3f4e9c5a1b2d7e8f00112233445566778899aabbccddeeff0011223344556677"
ID2 = "a" * 64
POD = "pod6d1f5e3c-1a2b-4c5d-8e9f-0a1b2c3d4e5f"
POD_S = "pod6d1f5e3c_1a2b_4c5d_8e9f_0a1b2c3d4e5f"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Docker, cgroup v2, systemd driver
        (f"0::/system.slice/docker-{ID}.scope\n", (ID, "docker", f"/system.slice/docker-{ID}.scope")),
        # Docker, cgroup v2, cgroupfs driver
        (f"0::/docker/{ID}\n", (ID, "docker", f"/docker/{ID}")),
        # Docker, cgroup v1, cgroupfs driver (many controllers)
        (
            (f"12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n10:cpu,cpuacct:/docker/{ID}\n"
             f"1:name=systemd:/docker/{ID}\n0::/system.slice/containerd.service\n"),
            (ID, "docker", f"/docker/{ID}"),
        ),
        # Docker, cgroup v1, systemd driver
        (
            f"7:cpu,cpuacct:/system.slice/docker-{ID}.scope\n1:name=systemd:/system.slice/docker-{ID}.scope\n",
            (ID, "docker", f"/system.slice/docker-{ID}.scope"),
        ),
        # rootless Docker
        (
            f"0::/user.slice/user-1000.slice/user@1000.service/docker-{ID}.scope\n",
            (ID, "docker", f"/user.slice/user-1000.slice/user@1000.service/docker-{ID}.scope"),
        ),
        # Docker in Docker: the outer id is the one the host's Docker knows
        (f"0::/docker/{ID}/docker/{ID2}\n", (ID, "docker", f"/docker/{ID}/docker/{ID2}")),
        # agent in a private cgroup namespace sees a relative path
        (f"0::/../../system.slice/docker-{ID}.scope\n", (ID, "docker", f"/../../system.slice/docker-{ID}.scope")),
        # AWS ECS
        (f"9:memory:/ecs/5a0d5f0e2a8f4e5c9d5e6f7a8b9c0d1e/{ID}\n", (ID, "docker", f"/ecs/5a0d5f0e2a8f4e5c9d5e6f7a8b9c0d1e/{ID}")),
        # Kubernetes + containerd, systemd driver, burstable
        (
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-{POD_S}.slice/cri-containerd-{ID}.scope\n",
            (ID, "containerd",
             f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-{POD_S}.slice/cri-containerd-{ID}.scope"),
        ),
        # Kubernetes + containerd, systemd driver, besteffort
        (
            f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-{POD_S}.slice/cri-containerd-{ID}.scope\n",
            (ID, "containerd",
             f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-{POD_S}.slice/cri-containerd-{ID}.scope"),
        ),
        # Kubernetes, cgroupfs driver, guaranteed / burstable / besteffort
        (f"0::/kubepods/{POD}/{ID}\n", (ID, "containerd", f"/kubepods/{POD}/{ID}")),
        (f"4:memory:/kubepods/burstable/{POD}/{ID}\n", (ID, "containerd", f"/kubepods/burstable/{POD}/{ID}")),
        (f"0::/kubepods/besteffort/{POD}/{ID}\n", (ID, "containerd", f"/kubepods/besteffort/{POD}/{ID}")),
        # Kubernetes with the Docker runtime under the systemd driver
        (
            f"0::/kubepods.slice/kubepods-{POD_S}.slice/docker-{ID}.scope\n",
            (ID, "docker", f"/kubepods.slice/kubepods-{POD_S}.slice/docker-{ID}.scope"),
        ),
        # nerdctl (containerd without Kubernetes)
        (f"0::/system.slice/nerdctl-{ID}.scope\n", (ID, "containerd", f"/system.slice/nerdctl-{ID}.scope")),
        (f"0::/default/{ID}\n", (ID, "containerd", f"/default/{ID}")),
        # CRI-O, the container and its conmon monitor
        (
            f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-{POD_S}.slice/crio-{ID}.scope\n",
            (ID, "cri-o", f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-{POD_S}.slice/crio-{ID}.scope"),
        ),
        (
            f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-{POD_S}.slice/crio-conmon-{ID}.scope\n",
            (ID, "cri-o",
             f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-{POD_S}.slice/crio-conmon-{ID}.scope"),
        ),
        (f"1:name=systemd:/kubepods/besteffort/{POD}/crio-{ID}\n", (ID, "cri-o", f"/kubepods/besteffort/{POD}/crio-{ID}")),
        # Podman: rootful, rootless, the "container" sub-cgroup, conmon, cgroupfs v1
        (f"0::/machine.slice/libpod-{ID}.scope\n", (ID, "podman", f"/machine.slice/libpod-{ID}.scope")),
        (
            f"0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n",
            (ID, "podman", f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container"),
        ),
        (f"0::/machine.slice/libpod-conmon-{ID}.scope\n", (ID, "podman", f"/machine.slice/libpod-conmon-{ID}.scope")),
        (f"5:memory:/libpod_parent/libpod-{ID}\n", (ID, "podman", f"/libpod_parent/libpod-{ID}")),
    ],
)
def test_container_samples(text, expected):
    """Each runtime's cgroup path yields its 64-hex id, the runtime name and the path used."""
    assert parse_cgroup(text) == expected


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("0::/init.scope\n", "/init.scope"),
        ("0::/system.slice/docker.service\n", "/system.slice/docker.service"),
        ("0::/system.slice/containerd.service\n", "/system.slice/containerd.service"),
        ("0::/user.slice/user-1000.slice/session-3.scope\n", "/user.slice/user-1000.slice/session-3.scope"),
        ("0::/\n", "/"),
        # hybrid v1/v2: the v2 line is "/", the systemd one says more
        ("12:memory:/user.slice\n1:name=systemd:/user.slice/user-0.slice/session-1.scope\n0::/\n",
         "/user.slice/user-0.slice/session-1.scope"),
        # a 32-hex name is not a container id
        ("0::/process_api/96d411517e53b7898a9205e36a492165\n", "/process_api/96d411517e53b7898a9205e36a492165"),
        # a pod slice without a container below it
        (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-{POD_S}.slice\n",
         f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-{POD_S}.slice"),
    ],
)
def test_host_samples(text, path):
    """Host processes give no container id and no runtime, but keep their cgroup path."""
    assert parse_cgroup(text) == ("", "", path)


@pytest.mark.parametrize("text", ["", "garbage\n", "::\n", "\n\n"])
def test_malformed_text(text):
    """Empty or malformed text gives empty values, never an exception."""
    assert parse_cgroup(text) == ("", "", "")


def test_uppercase_or_short_ids_are_not_containers():
    """Only lowercase 64-hex ids count (Docker, containerd, CRI-O and Podman all use them)."""
    assert container_from_path(f"/docker/{ID.upper()}") == ("", "")
    assert container_from_path(f"/docker/{ID[:63]}") == ("", "")
    assert container_from_path(f"/system.slice/docker-{ID}.scope.bak") == ("", "")


def test_own_process_parses():
    """The real /proc/self/cgroup of the test runner parses without error."""
    with open("/proc/self/cgroup") as f:
        cid, runtime, path = parse_cgroup(f.read())
    assert path.startswith("/")
    assert bool(cid) == bool(runtime)
    assert os.path.exists("/proc/self/cgroup")
