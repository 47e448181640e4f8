"""``minerwatch release CONTAINER``: unpause (or thaw) a container the agent paused, logged.

CONTAINER is a name, an id or an id prefix; ``pid:N`` continues a host process the agent
stopped. Who (``SUDO_USER``, ``USER`` or the uid) and when go to the log; the agent does not
pause a released container again. Exit codes: 0 released, 2 nothing to release or an error.
"""

from __future__ import annotations

import click


@click.command()
@click.argument("container")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Configuration file (default /etc/minerwatch/config.toml when it exists).")
def release(container: str, config_path: str | None) -> int:
    """Unpause / thaw CONTAINER (name, id or id prefix; pid:N for a stopped host process)."""
    from agent import logging_setup, trust
    from agent.response.records import ResponseRecords
    from agent.response.release import release as do_release
    from agent.collectors.docker_api import DockerHandle

    logging_setup.configure("info")
    cfg = trust.load_config(config_path)  # as root: nothing another user can change (exit 2 naming the path)
    done = do_release(container, ResponseRecords(cfg.agent.state_dir), DockerHandle(cfg.docker.url),
                      proc_root=cfg.agent.proc_root)
    click.echo(done.message())
    return 0
