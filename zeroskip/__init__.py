"""zeroskip: a CPU inference engine for pruned and int8-quantized MLPs and CNNs.

The data path (see docs/ and DESIGN.md): ONNX -> ``import_onnx`` -> ``Model`` -> ``save``/``load``
(``.zsk``) -> ``Session(model, mode)`` -> ``run(feeds)``.
"""

from .errors import InputError, ModelFormatError, UnsupportedModelError, ZeroskipError
from .model import CSR, Dense, Graph, Model, Node, QuantParams, ValueInfo

from ._version import __version__  # noqa: F401 - zeroskip.__version__

__all__ = [
    "CSR", "Dense", "Graph", "InputError", "Model", "ModelFormatError", "Node", "QuantParams",
    "Session", "UnsupportedModelError", "ValueInfo", "ZeroskipError", "import_onnx", "load", "save",
]


def load(path, *, verify="lazy"):
    """Load a ``.zsk`` file (memory-mapped, validated; see docs/format.md)."""
    from .formats.zsk import load as _load

    return _load(path, verify=verify)


def save(model, path):
    """Save ``model`` to ``path`` as ``.zsk``, atomically and deterministically."""
    from .formats.zsk import save as _save

    return _save(model, path)


def import_onnx(model_or_path):
    """Convert a float ONNX model (a path, bytes or an ``onnx.ModelProto``) to a ``Model``."""
    from .formats.onnx import import_onnx as _import

    return _import(model_or_path)


def __getattr__(name):
    if name == "Session":
        from .engine.session import Session

        return Session
    raise AttributeError(f"module 'zeroskip' has no attribute {name!r}")
