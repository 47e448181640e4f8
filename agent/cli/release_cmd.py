"""``minerwatch release CONTAINER``: unpause (or thaw) a container the agent paused, logged.

CONTAINER is a name, an id or an id prefix; ``pid:N`` continues a host process the agent
stopped. Only what minerwatch paused (its records in the state directory) is released, unless
``--force``. Who (``SUDO_USER``, ``USER`` or the uid) and when go to the log and to the state
directory; the agent does not pause a released container again while it lives. Exit codes:
0 released (or already released), 2 nothing to release or an error.
"""

from __future__ import annotations

import click


@click.command()
@click.argument("container")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Configuration file (default /etc/minerwatch/config.toml when it exists).")
@click.option("--force", is_flag=True,
              help="Also unpause a container minerwatch did not pause (it is then exempt while it lives).")
def release(container: str, config_path: str | None, force: bool) -> int:
    """Unpause / thaw CONTAINER that minerwatch paused (name, id or id prefix; pid:N for a
    stopped host process). minerwatch will not pause it again while it lives."""
    from agent import logging_setup, trust
    from agent.collectors.docker_api import DockerHandle
    from agent.response.records import ResponseRecords
    from agent.response.release import release as do_release

    logging_setup.configure("info", style="command")
    cfg = trust.load_config(config_path)  # as root: nothing another user can change (exit 2 naming the path)
    done = do_release(container, ResponseRecords(cfg.agent.state_dir), DockerHandle(cfg.docker.url),
                      proc_root=cfg.agent.proc_root, force=force)
    click.echo(done.message())
    return 0
