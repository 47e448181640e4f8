"""``minerwatch run``: the daemon in the foreground (systemd ``Type=notify``).

Exit codes: 0 on SIGTERM/SIGINT, 2 on a bad configuration or signature bundle, or (as root) a
configuration file or signature directory that other users could change (``agent.trust``).
"""

from __future__ import annotations

import click


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="Configuration file (default /etc/minerwatch/config.toml when it exists).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True, help="Operational log level (logs go to stderr: journald under systemd).")
def run(config_path: str | None, log_level: str) -> int:
    """Run the detection daemon in the foreground until SIGTERM or SIGINT."""
    import sys

    # structlog pulls in rich (tracebacks, console) whenever it is installed; the daemon logs JSON
    # and needs none of it: keep ~5 MiB and 90 modules out of a process that runs for months.
    sys.modules.setdefault("rich", None)
    from agent import config, logging_setup, trust
    from agent.daemon import wiring
    from agent.state_dir import prepare_state_dir

    logging_setup.configure(log_level)
    cfg = trust.load_config(config_path)  # as root: nothing another user can change (exit 2 naming the path)
    config.check_host_paths(cfg)
    sig = trust.load_signatures(cfg)
    prepare_state_dir(cfg.agent.state_dir, cfg.source)
    return wiring.build(cfg, sig, config_path=config_path).run()
