"""The float64 NumPy reference: one small, obviously correct function per IR op.

``OPS`` maps every op name of ``zeroskip.ops.OPS`` to its function. The executor calls
``OPS[node.op](*inputs, **node.attrs)``: inputs are ndarrays in node-input order (float tensors as
float64, integer tensors as int64, an omitted optional input as None), attrs the node's full
normalized attribute dict. Every function returns one ndarray (a tuple of them for an op with
several outputs). Bad inputs that only show at run time raise ``zeroskip.errors.InputError``.
"""

from __future__ import annotations

from . import conv as _conv
from . import elementwise, layout, matmul, normalization, pool, quantized, reduce

OPS = {
    "Conv": _conv.conv,
    "Gemm": matmul.gemm,
    "MatMul": matmul.matmul,
    "Add": elementwise.add,
    "Sub": elementwise.sub,
    "Mul": elementwise.mul,
    "Div": elementwise.div,
    "Sum": elementwise.sum,
    "Pow": elementwise.pow,
    "Sqrt": elementwise.sqrt,
    "Exp": elementwise.exp,
    "Relu": elementwise.relu,
    "Clip": elementwise.clip,
    "LeakyRelu": elementwise.leaky_relu,
    "Sigmoid": elementwise.sigmoid,
    "Tanh": elementwise.tanh,
    "Softmax": elementwise.softmax,
    "MaxPool": pool.max_pool,
    "AveragePool": pool.average_pool,
    "GlobalAveragePool": pool.global_average_pool,
    "GlobalMaxPool": pool.global_max_pool,
    "ReduceMean": reduce.reduce_mean,
    "ReduceSum": reduce.reduce_sum,
    "ReduceMax": reduce.reduce_max,
    "BatchNormalization": normalization.batch_normalization,
    "LRN": normalization.lrn,
    "Flatten": layout.flatten,
    "Reshape": layout.reshape,
    "Transpose": layout.transpose,
    "Concat": layout.concat,
    "Pad": layout.pad,
    "Identity": layout.identity,
    "Dropout": layout.dropout,
    "Shape": layout.shape,
    "Gather": layout.gather,
    "Unsqueeze": layout.unsqueeze,
    "Squeeze": layout.squeeze,
    "Cast": layout.cast,
    "ConstantOfShape": layout.constant_of_shape,
    **quantized.OPS,
}
"""Op name -> reference function."""


def _collect_references() -> dict:
    """The union of the ``REFERENCES`` dicts of this package's modules: kernel name -> reference.

    A kernel's reference lives in the module of the same name as the kernel's module
    (``kernels/matmul_csr.py`` <-> ``reference/matmul_csr.py``) and computes the same result in
    float64 (f32 kernels) or spells out the integer arithmetic in int64 (i8 kernels).
    """
    import importlib
    import pkgutil

    found = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, function in getattr(module, "REFERENCES", {}).items():
            if name in found:
                raise RuntimeError(f"reference {name!r} is defined twice")
            found[name] = function
    return found


REFERENCES = _collect_references()
"""Kernel name -> its reference (same keys as ``zeroskip.kernels.KERNELS``)."""

__all__ = ["OPS", "REFERENCES"]
