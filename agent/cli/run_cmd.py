"""``minerwatch run``: the daemon in the foreground (systemd ``Type=notify``).

Exit codes: 0 on SIGTERM/SIGINT, 2 on a bad configuration or signature bundle.
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
    from agent import config, logging_setup, signatures
    from agent.daemon import Daemon
    from agent.state_dir import prepare_state_dir

    logging_setup.configure(log_level)
    cfg = config.load(config_path)
    sig = signatures.load_bundle(cfg.agent.signatures or None)
    prepare_state_dir(cfg.agent.state_dir, cfg.source)
    return Daemon(cfg, sig, config_path=config_path).run()
