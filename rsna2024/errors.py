"""Exceptions of the kit. Each message names the file, row, column or tag at fault."""


class RsnaError(Exception):
    """Base class of the kit's own errors (caught by the CLI and shown without a traceback)."""


class DataError(RsnaError, ValueError):
    """A competition CSV file or data folder does not follow the contract."""


class SubmissionError(RsnaError, ValueError):
    """A submission-format table is incomplete or holds invalid values."""


class DicomError(RsnaError):
    """A DICOM series cannot be read: no readable slice, or a geometry tag is missing."""


class ConfigError(RsnaError, ValueError):
    """An experiment config, model name or task name is invalid (unknown key, wrong type, missing weights)."""
