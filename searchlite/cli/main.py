"""The `searchlite` command: parse, call the library, print. No logic of its own.

Commands live in searchlite.cli.library_commands and searchlite.cli.eval_commands; importing them
registers them on the shared typer app.
"""

from __future__ import annotations

import contextlib
import sys

import typer

from searchlite import SearchliteError
from searchlite.cli import eval_commands, housekeeping_commands, library_commands  # noqa: F401 - registers the commands
from searchlite.cli.common import app

__all__ = ["app", "main"]

#: click's ClickException as the installed typer raises it: typer >= 0.2x vendors click as
#: ``typer._click`` (and no longer depends on click), older ones raise click's own. Found through
#: the MRO of ``typer.BadParameter`` so the CLI never imports a click typer does not use.
ClickException: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
#: typer.Exit is typer's own class in typer >= 0.2x; older typers re-export click's, which is
#: also what their parser raises (e.g. for --help).
_EXITS = tuple({typer.Exit, *(c for c in (getattr(sys.modules.get(ClickException.__module__), "Exit", None),)
                              if isinstance(c, type))})


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
    if len(sys.argv) <= 1:  # no command: the help on stderr and exit 2, as click >= 8.2 does (8.1 exited 0)
        with contextlib.redirect_stdout(sys.stderr), contextlib.suppress(ClickException, *_EXITS):
            app(["--help"], standalone_mode=False)
        sys.exit(2)
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
    except ClickException as exc:  # usage errors: click's short message (and usage line), exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except _EXITS as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        message = known_failure(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
