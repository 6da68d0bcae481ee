"""ONNX op semantics in float64: one small, obviously correct NumPy function per IR op.

``OPS`` maps every op name of ``zeroskip.ops.OPS`` to its function. The executor calls
``OPS[node.op](*inputs, **node.attrs)``: inputs are ndarrays in node-input order (float tensors as
float64, integer tensors as int64, an omitted optional input as None), attrs the node's full
normalized attribute dict. Every function returns one ndarray (a tuple of them for an op with
several outputs). Bad inputs that only show at run time raise ``zeroskip.errors.InputError``.

One module per family: conv, matmul (Gemm, MatMul), elementwise (arithmetic and activations), pool,
reduce, normalization, layout (shapes and data movement), and quantized (QuantizeLinear, the Q* ops,
ONNX's integer ops). quantized is the *float* reference (dequantize, float64, quantize), which
measures quantization error; the integer arithmetic the int8 kernels match bit for bit is in
``zeroskip.reference.kernels``.
"""

from __future__ import annotations

from . import conv, elementwise, layout, matmul, normalization, pool, quantized, reduce

OPS = {
    "Conv": conv.conv,
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

__all__ = ["OPS"]
