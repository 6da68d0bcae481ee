"""What this CPU can run, read once from LLVM's view of the host (the target the kernels compile for).

The kernels written in LLVM IR (the int8 GEMM tile in matmul_dense.py, the float32 CSR row block in
matmul_csr.py) use instructions that only some x86 CPUs have, so each module picks its variant from
these flags when it is imported, and keeps a portable variant for every other CPU. The tests run
every variant this CPU can run against the portable one.
"""

from __future__ import annotations


def _host_features() -> dict:
    try:
        from llvmlite import binding as llvm

        return dict(llvm.get_host_cpu_features())
    except Exception:  # noqa: BLE001 - no feature list: take the portable paths
        return {}


FEATURES = _host_features()

HAS_AVX2 = bool(FEATURES.get("avx2", False))
"""AVX2: 256-bit integer vectors (``vpmaddwd``) and 16 ymm registers."""
HAS_AVX512 = HAS_AVX2 and bool(FEATURES.get("avx512f", False) and FEATURES.get("avx512vl", False))
"""AVX-512 F and VL: 512-bit vectors, 32 vector registers, and masks for any lane count."""
HAS_VNNI = HAS_AVX2 and bool(FEATURES.get("avxvnni", False) or (
    FEATURES.get("avx512vnni", False) and FEATURES.get("avx512vl", False)))
"""A 256-bit ``vpdpbusd`` (AVX-VNNI, or AVX-512 VNNI with AVX-512 VL)."""
HAS_AVX512_VNNI = HAS_AVX512 and bool(FEATURES.get("avx512vnni", False))
"""A 512-bit ``vpdpbusd`` (AVX-512 VNNI): the dense int8 GEMM's broadcast tile (``_broadcast.py``)."""
HAS_AVX512_VBMI = HAS_AVX512 and bool(FEATURES.get("avx512vbmi", False))
"""AVX-512 VBMI: ``vpermb``, any byte of a zmm into any lane (the depthwise tile's windows)."""
