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


def main() -> None:
    """Entry point: domain errors become one-line messages and a non-zero exit status."""
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


if __name__ == "__main__":
    main()
