"""Domain errors. Library code raises these; only the CLI turns them into exit codes."""


class SearchliteError(Exception):
    """Base class for every error a user can cause and fix."""

    exit_code = 1


class ModelLoadError(SearchliteError):
    """A model spec could not be resolved or its weights could not be loaded."""


class ImageDecodeError(SearchliteError):
    """One image could not be decoded (recorded per image, never fatal for a run)."""


class LibraryError(SearchliteError):
    """The library folder or its catalog is missing, locked or inconsistent."""


class QueryError(SearchliteError):
    """A query could not be parsed or answered."""


class DatasetError(SearchliteError):
    """A benchmark or calibration dataset could not be read."""
