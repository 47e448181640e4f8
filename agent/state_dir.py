"""The agent's state directory: root's alone (as root), created 0700, never world-readable."""

from __future__ import annotations

import os
import stat

from agent import trust
from agent.errors import ConfigError


def prepare_state_dir(path: str, source: str = "<defaults>") -> str:
    """Create ``path`` (mode 0700) or tighten an existing one; ConfigError when impossible.
    As root, a state directory another user owns or could change is refused (TrustError, exit 2):
    it holds the pause records, the dedupe memory and the quarantine."""
    trust.check_state_dir(path)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise ConfigError(source, "[agent] state_dir", f"{path} is not a directory")
        if st.st_mode & 0o077:
            os.chmod(path, 0o700)
    except OSError as exc:
        raise ConfigError(source, "[agent] state_dir", f"cannot prepare {path}: {exc.strerror or exc}") from None
    return path
