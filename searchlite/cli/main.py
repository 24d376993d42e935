"""The `searchlite` command: parse, call the library, print. No logic of its own.

Commands live in searchlite.cli.library_commands and searchlite.cli.eval_commands; importing them
registers them on the shared typer app.
"""

from __future__ import annotations

import sys

import click
import typer

from searchlite.cli import eval_commands, library_commands  # noqa: F401 - registers the commands
from searchlite.cli.common import app
from searchlite.errors import SearchliteError

__all__ = ["app", "main"]


def _one_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def known_failure(exc: BaseException) -> str | None:
    """A one-line message for failures a user can meet and fix (a locked or unreadable catalog,
    file-system errors, FAISS errors); None for anything else (a bug: let it show)."""
    sa_exc = sys.modules.get("sqlalchemy.exc")  # imported only if the command touched the catalog
    if sa_exc is not None and isinstance(exc, sa_exc.DBAPIError):
        reason = _one_line(exc.orig) if exc.orig is not None else _one_line(exc)
        hint = " (another searchlite process holds it; try again when it is done)" if "locked" in reason else ""
        return f"the library catalog cannot be used: {reason}{hint}"
    if isinstance(exc, OSError):
        return (exc.strerror or _one_line(exc)) + (f": {exc.filename}" if exc.filename else "")
    if isinstance(exc, RuntimeError) and ("faiss" in repr(exc).lower() or "Error in" in str(exc)):
        return f"FAISS failed: {_one_line(exc)}"
    return None


def main() -> None:
    """Entry point: every error a user can cause becomes one line on stderr and a non-zero exit."""
    try:
        app(standalone_mode=False)
    except SearchliteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        message = known_failure(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
