"""Errors a user can cause (a one-line message and a Docker-style exit code)
versus bugs (a traceback). The CLI prints a UserError as one line on stderr and
exits with its code; anything else is a bug and keeps its traceback."""

from __future__ import annotations

# Docker's exit codes for `docker run` (docs.docker.com "docker run" / Exit status).
EXIT_RUNTIME = 125  # the runtime itself failed (bad flag, unknown image, ...)
EXIT_NOT_EXECUTABLE = 126  # the command exists but cannot be executed
EXIT_NOT_FOUND = 127  # the command was not found
EXIT_SIGNAL_BASE = 128  # killed by signal N -> 128 + N (137 = SIGKILL, also OOM)


class UserError(Exception):
    """A problem in what the user asked for, or in the machine, that a message explains."""

    exit_code = EXIT_RUNTIME

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class ImageNotFound(UserError):
    pass


class ContainerNotFound(UserError):
    pass


class Conflict(UserError):
    """A name already in use, a running container removed without -f, ..."""


class NotSupported(UserError):
    """The kernel or the privileges do not allow this; the message says what would."""
