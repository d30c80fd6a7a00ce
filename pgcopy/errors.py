"""Errors that reach the user as one line, and the exit-code table.

Every error here is picklable (plain args only) so it can cross a process boundary.
"""

from __future__ import annotations

EXIT_OK = 0  # everything asked for was done
EXIT_ERROR = 1  # an operational error: connection, permission, SQL failure
EXIT_USAGE = 2  # bad command line or a preflight refusal; nothing was changed
EXIT_CANCELLED = 3  # the user declined the confirmation prompt; nothing was changed
EXIT_PARTIAL = 4  # the run finished but some tables failed or an FK could not be validated
EXIT_SIGINT = 130  # interrupted by Ctrl-C (SIGINT)
EXIT_SIGHUP = 129  # hangup: the terminal or SSH session closed
EXIT_SIGTERM = 143  # terminated by SIGTERM

EXIT_CODES = [
    (EXIT_OK, "success"),
    (EXIT_ERROR, "error (connection, authentication, permission or SQL failure)"),
    (EXIT_USAGE, "usage error or preflight refusal; the destination was not changed"),
    (EXIT_CANCELLED, "cancelled at the confirmation prompt; nothing was changed"),
    (EXIT_PARTIAL, "partial failure: some tables failed or a foreign key stayed NOT VALID"),
    (EXIT_SIGINT, "interrupted by SIGINT (Ctrl-C); tables in flight rolled back"),
    (EXIT_SIGHUP, "stopped by SIGHUP (terminal or SSH session closed); tables in flight rolled back"),
    (EXIT_SIGTERM, "terminated by SIGTERM; tables in flight rolled back"),
]


class PgcopyError(Exception):
    """An error shown as ``pgcopy: error: <message>``."""

    exit_code = EXIT_ERROR


class UsageError(PgcopyError):
    exit_code = EXIT_USAGE


class PreflightError(PgcopyError):
    """One or more reasons not to start; all of them are listed."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: list[str]):
        super().__init__(problems)
        self.problems = problems

    def __str__(self) -> str:
        if len(self.problems) == 1:
            return "preflight refused: " + self.problems[0]
        lines = [f"preflight refused ({len(self.problems)} problems):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class Cancelled(PgcopyError):
    exit_code = EXIT_CANCELLED


class Interrupted(PgcopyError):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message, exit_code)
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.args[0]
