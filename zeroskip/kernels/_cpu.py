"""What the CPU that the kernels compile for can run, read once when the package loads.

The kernels written in LLVM IR (the int8 GEMM tile in matmul_dense.py, the float32 CSR row block in
matmul_csr.py) use instructions that only some x86 CPUs have, so each module picks its variant from
these flags when it is imported, and keeps a portable variant for every other CPU. The tests run
every variant this CPU can run against the portable one.

The target is Numba's: the host, unless ``NUMBA_CPU_NAME`` names another CPU (``generic`` is what
Numba's documentation suggests for caches shared between machines). Then only the features listed in
``NUMBA_CPU_FEATURES`` count (none if it is unset), so ``NUMBA_CPU_NAME=generic`` runs the portable
kernels: the host's vector instructions in IR compiled for a generic x86-64 stopped the process
with an LLVM error (``Do not know how to split the result of this operator``, at the first
int8 requantization, ``zeroskip demo``).
"""

from __future__ import annotations


def _parsed(features: str) -> dict:
    """LLVM's feature string ("+avx2,+fma,-avx512f") as {name: enabled}."""
    return {f[1:]: f[0] == "+" for f in (p.strip() for p in features.split(",")) if f[1:]}


def target_features(cpu_name, cpu_features) -> dict:
    """{feature: enabled} of the CPU Numba compiles for, from NUMBA_CPU_NAME and NUMBA_CPU_FEATURES
    (``numba.config.CPU_NAME``, ``CPU_FEATURES``): the host's, or the listed ones for the host; for
    another named CPU only the listed ones."""
    if cpu_name not in (None, "", "host"):
        return _parsed(cpu_features or "")
    if cpu_features:
        return _parsed(cpu_features)
    try:
        from llvmlite import binding as llvm

        return dict(llvm.get_host_cpu_features())
    except Exception:  # noqa: BLE001 - no feature list: take the portable paths
        return {}


def _numba_target() -> dict:
    try:
        from numba.core import config

        return target_features(config.CPU_NAME, config.CPU_FEATURES)
    except Exception:  # noqa: BLE001 - no Numba config: the host's
        return target_features(None, None)


FEATURES = _numba_target()

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
