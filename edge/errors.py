"""The project's one error type.

Every layer raises :class:`SignguardError` (or a subclass) for bad input it can
name: a file, a field, a value.  The CLI turns it into a one-line message and
exit code 1; anything else is a bug and keeps its traceback.
"""

import importlib
from typing import Any


class SignguardError(Exception):
    """A user-facing error whose message names the file, field or value at fault."""


class BundleError(SignguardError):
    """A deployment bundle is missing a file, has a wrong hash or an unknown schema."""


class ConfigError(SignguardError):
    """A config file has an unknown, missing or ill-typed field."""


class SourceError(SignguardError):
    """A video/camera/image source cannot be opened or read."""


def require(module: str, hint: str) -> Any:
    """Import an optional dependency (onnx, onnxruntime, tensorrt, pycuda, matplotlib, ...) where it is
    first needed, so that the package imports without it; when it is missing, a SignguardError says
    ``hint`` (what needs it and what to install) instead of an ImportError from deep inside a command."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise SignguardError("%s (%s)" % (hint, e)) from None
