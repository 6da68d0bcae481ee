"""zeroskip: a CPU inference engine for pruned and int8-quantized MLPs and CNNs.

The data path (see docs/ and DESIGN.md): ONNX -> ``import_onnx`` -> ``Model`` -> ``save``/``load``
(``.zsk``) -> ``Session(model, mode)`` -> ``run(feeds)``.
"""

from .errors import (CompressionError, InputError, ModelFormatError, SaveError,
                     UnsupportedModelError, ZeroskipError)
from .model import BSR, CSR, Dense, Graph, Model, Node, QuantParams, ValueInfo

from ._version import __version__  # noqa: F401 - zeroskip.__version__

__all__ = [
    "BSR", "CSR", "CompressionError", "Dense", "Graph", "InputError", "Model", "ModelFormatError", "Node",
    "QuantParams", "SaveError", "Session", "UnsupportedModelError", "ValueInfo", "ZeroskipError",
    "import_onnx", "load", "prune", "quantize", "save",
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


def prune(model, sparsity=0.9, structure="unstructured", scope="global", exclude=(),
          importance="l1"):
    """A copy of float ``model`` with its Conv/Gemm/MatMul weights pruned (``compress.pruning``).

    structure: "unstructured", "channel" (whole output channels, cut out of the model where the
    graph allows), "n:m" such as "2:4", or "block:RxC" such as "block:1x4"; scope: "global" (one
    threshold across layers), "layer" (the same sparsity in each) or a dict layer -> sparsity;
    exclude: node names or op types left alone; importance: "l1" or "l2".
    """
    from .compress.pruning import prune as _prune

    return _prune(model, sparsity, structure, scope, exclude, importance)


def quantize(model, calibration, method="minmax", activations="uint8", per_channel=True,
             keep_float=(), percentile=99.99, progress=True):
    """An int8 copy of float ``model``, calibrated on ``calibration`` (``compress.quantization``).

    calibration: an array (batch first), a feed dict, or an iterable of either, streamed; method:
    "minmax", "percentile", "mse" or "entropy"; activations: "uint8" or "int8"; per_channel: one
    weight scale per output channel; keep_float: node names or op types left in float. The
    per-layer SQNR report is in ``metadata["quantization"]["layers"]``, worst first.
    """
    from .compress.quantization import quantize as _quantize

    return _quantize(model, calibration, method, activations, per_channel, keep_float,
                     percentile, progress)


def __getattr__(name):
    if name == "Session":
        from .engine.session import Session

        return Session
    if name == "compress":  # zeroskip.compress.low_rank, .masks, .schedule after `import zeroskip`
        import importlib

        return importlib.import_module(".compress", __name__)
    raise AttributeError(f"module 'zeroskip' has no attribute {name!r}")
