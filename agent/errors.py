"""Error types that carry their exit code; one top-level handler prints them."""

from __future__ import annotations


class MinerwatchError(Exception):
    """Base error; ``exit_code`` is what the CLI returns."""

    exit_code = 2


class ConfigError(MinerwatchError):
    """A configuration file is unreadable, malformed, or has a bad key or value."""

    def __init__(self, path: str, key: str, message: str) -> None:
        self.path, self.key, self.message = path, key, message
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {message}")


class SignatureIssue:
    """One bad entry in a signature bundle, located by file and line."""

    __slots__ = ("file", "line", "message")

    def __init__(self, file: str, line: int, message: str) -> None:
        self.file, self.line, self.message = file, line, message

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"

    def __repr__(self) -> str:
        return f"SignatureIssue({str(self)!r})"


class SignatureError(MinerwatchError):
    """A signature bundle has bad entries; ``issues`` lists every one of them."""

    def __init__(self, directory: str, issues: list[SignatureIssue]) -> None:
        self.directory, self.issues = directory, list(issues)
        lines = "\n".join(f"  {i}" for i in self.issues)
        super().__init__(f"signature bundle {directory} has {len(self.issues)} problem(s):\n{lines}")


class DockerUnavailable(MinerwatchError):
    """The Docker socket cannot be reached."""
