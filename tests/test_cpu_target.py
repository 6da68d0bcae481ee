"""The CPU the kernels compile for is Numba's target (kernels/_cpu.py): the host, unless
NUMBA_CPU_NAME names another CPU, and then only the features NUMBA_CPU_FEATURES lists.

``NUMBA_CPU_NAME=generic`` (Numba's advice for caches shared between machines) used to stop the
process with an LLVM error, the host's AVX-512 instructions being compiled for a generic x86-64;
now it runs the portable kernels, with the same bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np

from zeroskip.kernels import _cpu

CHILD = """
import json, sys
import numpy as np
import zeroskip
from zeroskip.kernels import _cpu, matmul_dense

from zeroskip.demo import load_model

x = np.load(sys.argv[1])
sess = zeroskip.Session(load_model("digits_mlp_int8"), mode="dense-i8", threads=1)
np.save(sys.argv[2], sess.run({sess.inputs[0].name: x})[sess.outputs[0].name])
json.dump({"avx2": _cpu.HAS_AVX2, "avx512": _cpu.HAS_AVX512, "vnni": _cpu.HAS_VNNI,
           "portable_tile": matmul_dense._tile is matmul_dense.TILES["portable"]},
          open(sys.argv[3], "w"))
"""


def test_target_features_follow_numba_config():
    host = _cpu.target_features(None, None)
    assert host == _cpu.target_features("host", None)
    assert _cpu.target_features("generic", None) == {}
    assert _cpu.target_features("haswell", "+avx2,+fma,-avx512f") == {
        "avx2": True, "fma": True, "avx512f": False}
    assert _cpu.target_features(None, " +avx2 , -avx512vnni") == {"avx2": True,
                                                                    "avx512vnni": False}
    assert _cpu.target_features("znver4", "") == {}


def test_a_generic_target_runs_the_portable_kernels_with_the_same_bytes(tmp_path):
    import zeroskip
    from zeroskip.demo import load_images, load_model

    x = load_images()[0][:16]
    sess = zeroskip.Session(load_model("digits_mlp_int8"), mode="dense-i8", threads=1)
    want = sess.run({sess.inputs[0].name: x})[sess.outputs[0].name]
    inputs, out, report = tmp_path / "x.npy", tmp_path / "y.npy", tmp_path / "report.json"
    np.save(inputs, x)
    env = dict(os.environ, NUMBA_CPU_NAME="generic")
    env.pop("NUMBA_CPU_FEATURES", None)
    done = subprocess.run([sys.executable, "-c", CHILD, str(inputs), str(out), str(report)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    flags = json.loads(report.read_text())
    assert flags == {"avx2": False, "avx512": False, "vnni": False, "portable_tile": True}
    got = np.load(out)
    assert got.dtype == want.dtype and np.array_equal(got, want)
