"""The one Docker connection handle: the SDK's errors become typed ones here, at the edge.

    docker = DockerHandle(url)               # connects lazily, reconnects after a failure
    info = docker.inspect_container(cid)     # ContainerInfo; ContainerGone / DockerDown / DockerRefused
    running = docker.running()               # {id: ContainerInfo} of running and paused containers

Callers never see ``docker.errors`` or ``requests`` exceptions: ``DockerDown`` (socket absent,
refused, hung: the agent goes on in process-only mode), ``ContainerGone`` (normal churn) and
``DockerRefused`` (the engine answered with an error). The event stream keeps its own client
(``docker_events``: a stream on another thread), made by ``connect`` below.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import structlog

from collections import OrderedDict

from agent.collectors.docker_inventory import container_from_inspect, labels_of
from agent.errors import DockerUnavailable, MinerwatchError
from agent.model import ContainerInfo

log = structlog.get_logger("minerwatch.docker")


class DockerDown(DockerUnavailable):
    """The engine cannot be reached (or stopped answering): try again later."""


class ContainerGone(MinerwatchError):
    """No such container (or image) any more."""


class DockerRefused(MinerwatchError):
    """The engine answered with an error; ``str()`` is its explanation."""


def connect(url: str, timeout: float | None = 5.0):
    """A pinged SDK client for ``url``; ``DockerDown`` when it does not answer."""
    import docker  # here: the sweep must work (and start fast) on hosts without Docker

    with translated(url):
        client = docker.DockerClient(base_url=url, timeout=timeout)
        try:
            client.ping()
        except BaseException:
            client.close()
            raise
        return client


@contextlib.contextmanager
def translated(url: str, what: str = "") -> Iterator[None]:
    """Turn the SDK's exceptions raised inside into DockerDown / ContainerGone / DockerRefused."""
    import docker
    import requests

    try:
        yield
    except docker.errors.NotFound as exc:
        raise ContainerGone(f"{what or 'object'} not found: {exc.explanation or exc}") from None
    except docker.errors.APIError as exc:
        raise DockerRefused(str(exc.explanation or exc)) from None
    except (docker.errors.DockerException, requests.RequestException, OSError) as exc:
        raise DockerDown(f"Docker is not reachable at {url}: {exc}") from None


class DockerHandle:
    """A lazily connected client; after ``DockerDown`` the next call connects afresh."""

    def __init__(self, url: str, *, timeout: float | None = 5.0, client=None) -> None:
        self.url = url
        self.timeout = timeout
        self._client = client
        self._image_labels: OrderedDict[str, tuple[tuple[str, str], ...]] = OrderedDict()  # by image id

    @classmethod
    def of(cls, client, url: str = "") -> "DockerHandle":
        """A handle over an existing SDK client (tests, benchmarks)."""
        return cls(url or str(getattr(client.api, "base_url", "")), client=client)

    @property
    def connected(self) -> bool:
        return self._client is not None

    def client(self):
        """The SDK client (connecting if needed); ``DockerDown`` when unreachable."""
        if self._client is None:
            self._client = connect(self.url, self.timeout)
        return self._client

    def available(self) -> bool:
        """Connect if needed; False (and logged at debug) when Docker does not answer."""
        try:
            self.client()
            return True
        except DockerDown as exc:
            log.debug("docker_connect_failed", url=self.url, error=str(exc))
            return False

    @contextlib.contextmanager
    def _call(self, what: str = "") -> Iterator[object]:
        client = self.client()
        try:
            with translated(self.url, what):
                yield client
        except DockerDown:
            self.drop()
            raise

    def drop(self) -> None:
        """Forget the client (its socket broke); the next call reconnects."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a broken client can fail in SDK-internal ways
                client.close()

    # ------------------------------------------------------------------ containers

    def inspect_raw(self, container_id: str) -> dict:
        with self._call(f"container {container_id[:12]}") as c:
            return c.api.inspect_container(container_id)

    def inspect_container(self, container_id: str) -> ContainerInfo:
        """The container, with its image's labels (so policy can tell which labels the operator set)."""
        data = self.inspect_raw(container_id)
        return container_from_inspect(data, self.image_labels(str(data.get("Image") or "")))

    def image_labels(self, image_id: str) -> tuple[tuple[str, str], ...] | None:
        """Labels of an image by id (cached: an id names one immutable config); None when unknown."""
        if not image_id:
            return None
        if (cached := self._image_labels.get(image_id)) is not None:
            return cached
        try:
            labels = labels_of(self.inspect_image(image_id).get("Config"))
        except (ContainerGone, DockerRefused):  # removed (docker rmi -f) or refused: unknown
            return None
        self._image_labels[image_id] = labels
        while len(self._image_labels) > 1024:
            self._image_labels.popitem(last=False)
        return labels

    def running(self) -> dict[str, ContainerInfo]:
        """Every running or paused container, inspected; one removed meanwhile is skipped."""
        with self._call() as c:
            summaries = c.api.containers(filters={"status": ["running", "paused"]})
        out: dict[str, ContainerInfo] = {}
        for summary in summaries:
            try:
                info = self.inspect_container(summary["Id"])
            except ContainerGone:  # removed between list and inspect: normal churn
                continue
            out[info.id] = info
        return out

    def pause(self, container_id: str) -> None:
        with self._call(f"container {container_id[:12]}") as c:
            c.api.pause(container_id)

    def unpause(self, container_id: str) -> None:
        with self._call(f"container {container_id[:12]}") as c:
            c.api.unpause(container_id)

    # ------------------------------------------------------------------ images

    def inspect_image(self, name: str) -> dict:
        with self._call(f"image {name}") as c:
            return c.api.inspect_image(name)

    def export_image(self, name: str) -> Iterator[bytes]:
        """The ``docker save`` stream of one image, in chunks; errors mid-stream are translated too."""
        with self._call(f"image {name}") as c:
            chunks = c.api.get_image(name)
        with translated(self.url, f"image {name}"):
            yield from chunks
