"""The typer CLI (thin layer over searchlite.library)."""
