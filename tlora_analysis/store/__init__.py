"""The run store: the directory format, its writer, and the lazy reader ``Run``.

docs/run-format.md documents the format; :mod:`tlora_analysis.recording` writes it during
training; analysis reads it through :class:`Run`.
"""

from .format import (
    SCHEMA_VERSION, SUPPORTED_SCHEMA_VERSIONS, ForeignFileError, NonFiniteError, NotARunError, RunExistsError,
    SchemaVersionError, UnknownLayerError, UnknownStepError,
)
from .base_weights import BaseModelError, BaseWeightsMismatchError
from .reader import Run, open_run
from .verify import FileCheck, VerifyReport
from .writer import RunWriter

__all__ = [
    "Run", "open_run", "BaseModelError", "BaseWeightsMismatchError", "RunWriter", "VerifyReport", "FileCheck", "SCHEMA_VERSION", "SUPPORTED_SCHEMA_VERSIONS",
    "NotARunError", "RunExistsError", "SchemaVersionError", "UnknownLayerError", "UnknownStepError",
    "ForeignFileError", "NonFiniteError",
]
