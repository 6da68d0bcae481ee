"""The errors zeroskip raises on bad input.

Every error a user can cause is a ``ZeroskipError``; anything else escaping the package is a bug.
Messages name the tensor, node or input at fault and the rule it broke.
"""


class ZeroskipError(ValueError):
    """Base class of every error caused by bad input (a file, a model, or the arrays given to run)."""


class ModelFormatError(ZeroskipError):
    """A ``.zsk`` or ONNX file is malformed, corrupt, or breaks a rule of the format or the graph."""


class UnsupportedModelError(ZeroskipError):
    """A well-formed model uses ops, attributes, domains or dtypes that zeroskip does not run."""


class InputError(ZeroskipError):
    """The arrays given to ``Session.run`` do not match the model's inputs."""


class CompressionError(ZeroskipError):
    """An argument of ``prune``, ``quantize`` or ``low_rank`` (a sparsity, a structure, a method,
    calibration data) breaks its rule. The input model is left as it was."""


class SaveError(ZeroskipError, OSError):
    """``save`` could not write the file (a missing or read-only directory, a full disk...). The
    message names the path and the reason; ``errno`` is the system's. Also an ``OSError``, so code
    that caught the system's error around ``save`` still catches it."""
