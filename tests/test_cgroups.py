"""Container id and runtime from /proc/PID/cgroup text, cgroup v1 and v2, every runtime we know."""

from __future__ import annotations

import os

import pytest

from agent.collectors.cgroups import cgroup_claim, classify_path, container_from_path, container_scope, parse_cgroup

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
        # Podman: rootful, the "container" sub-cgroup, conmon, cgroupfs v1
        (f"0::/machine.slice/libpod-{ID}.scope\n", (ID, "podman", f"/machine.slice/libpod-{ID}.scope")),
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


# --------------------------------------------------------------------------- forged attribution

USER = "/user.slice/user-1000.slice/user@1000.service"


@pytest.mark.parametrize("path", [
    # the attack: a name made in one's own delegated subtree (rootless Docker/Podman look the same)
    f"{USER}/docker-{ID}.scope",
    f"{USER}/app.slice/docker-{ID}.scope",
    f"{USER}/user.slice/libpod-{ID}.scope/container",
    f"{USER}/deep/er/{ID}",
    f"{USER}/docker/{ID}",
    f"/user.slice/docker-{ID}.scope",  # made by root, but never a runtime's layout
    f"/user.slice/user-1000.slice/session-3.scope/docker-{ID}.scope",
    # a delegated service (Delegate=yes) or any non-slice parent of a scope
    f"/system.slice/myapp.service/docker-{ID}.scope",
    f"/system.slice/docker.service/docker-{ID}.scope",
    f"/minerwatch/docker-{ID}.scope",
    f"/system.slice/foo.scope/docker-{ID}.scope",
    # bare ids outside the layouts that use them
    f"/a/b/{ID}", f"/system.slice/{ID}", f"/kubepods/notapod/{ID}", f"/x/libpod-{ID}", f"/x/y/crio-{ID}",
    f"/{ID}", f"/.hidden/{ID}", f"/x.slice/{ID}",
    # ".." inside a path is nothing the kernel writes
    f"/docker/../docker/{ID}",
])
def test_paths_no_runtime_makes_are_claims_not_containers(path):
    """A container-like name where no runtime puts its containers is a claim, never the container."""
    assert classify_path(path) == ("", "", ID)
    assert container_from_path(path) == ("", "")
    assert parse_cgroup(f"0::{path}\n") == ("", "", path)
    assert cgroup_claim(f"0::{path}\n") == ID


@pytest.mark.parametrize("path, runtime", [
    (f"/docker/{ID}", "docker"),
    (f"/system.slice/docker-{ID}.scope", "docker"),
    (f"/custom.slice/custom-web.slice/docker-{ID}.scope", "docker"),  # --cgroup-parent custom-web.slice
    (f"/docker-{ID}.scope", "docker"),  # scopes may sit in the root slice
    (f"/../../system.slice/docker-{ID}.scope", "docker"),
    (f"/docker/{ID}/docker/{ID2}", "docker"),  # Docker in Docker, cgroupfs in cgroupfs
    (f"/system.slice/docker-{ID}.scope/docker/{ID2}", "docker"),  # DinD under the systemd driver
    (f"/system.slice/docker-{ID}.scope/{USER}/docker-{ID2}.scope", "docker"),  # below the anchor: its own
    (f"/ecs/task1/{ID}", "docker"),
    (f"/kubepods/{POD}/{ID}", "containerd"),
    (f"/default/{ID}", "containerd"),
    (f"/machine.slice/libpod-{ID}.scope/container", "podman"),
    (f"/libpod_parent/libpod-{ID}", "podman"),
    (f"/kubepods/besteffort/{POD}/crio-conmon-{ID}", "cri-o"),
])
def test_runtime_layouts_are_containers_without_a_claim(path, runtime):
    """Each layout a runtime makes is its container (the outermost one), and claims nothing."""
    assert classify_path(path) == (ID, runtime, "")
    assert cgroup_claim(f"0::{path}\n") == ""


def test_container_scope_is_the_path_down_to_the_anchor():
    """Two processes of one container share its scope whatever sub-cgroups it made; a claim has none."""
    assert container_scope(f"/system.slice/docker-{ID}.scope/init") == f"/system.slice/docker-{ID}.scope"
    assert container_scope(f"/docker/{ID}/docker/{ID2}") == f"/docker/{ID}"
    assert container_scope(f"{USER}/docker-{ID}.scope") == ""
    assert container_scope(f"/system.slice/docker-{ID}.scope") != container_scope(f"/docker/{ID}")


def test_a_forged_line_beside_a_real_container_is_still_a_claim():
    """Hybrid v1: the real container on most hierarchies, another id on one: the container is the real one,
    and the other id is reported as a claim (a container with write access to a host hierarchy made it)."""
    text = f"9:name=systemd:/user.slice/docker-{ID2}.scope\n4:memory:/docker/{ID}\n1:cpu:/docker/{ID}\n0::/\n"
    assert parse_cgroup(text)[:2] == (ID, "docker")
    assert cgroup_claim(text) == ID2
    assert cgroup_claim(f"4:memory:/docker/{ID}\n0::/docker/{ID}\n") == ""
