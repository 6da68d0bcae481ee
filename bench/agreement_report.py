"""How closely int8 ONNX import agrees with onnxruntime, model by model: a report, not a test.

For every combination that tests/test_onnx_quant_import.py's test_quantized_model_matches_onnxruntime
checks (model × QDQ/QOperator × uint8/int8 activations × per-channel/per-tensor weights), this runs
the same comparison (``_compare``: onnxruntime's quantizer, ``import_onnx``,
``Session(mode="reference")`` on the same test samples) and prints the largest difference in output
steps, the share of integer outputs that differ and the top-1 agreement, beside the bounds that test
asserts on every row (so a row over a bound fails there, not here).

    python bench/agreement_report.py

Needs onnx and onnxruntime (the ``test`` extra).
"""

from __future__ import annotations

import logging
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))

from test_onnx_quant_import import (COMBOS, MAX_DIFFERING, MAX_STEPS,  # noqa: E402
                                    _compare)


def measure(name, fmt, activation, per_channel) -> tuple[int, float, float]:
    """(max step difference, share of integer outputs that differ, top-1 agreement) of one combo."""
    _, want, got, q_name = _compare(name, fmt, activation, per_channel)
    steps = np.abs(got[q_name].astype(np.int64) - want[q_name].astype(np.int64))
    top1 = float(np.mean(got["y"].argmax(axis=1) == want["y"].argmax(axis=1)))
    return int(steps.max()), float(np.mean(steps > 0)), top1


def main() -> None:
    logging.disable(logging.WARNING)  # the quantizer's advice on reduce_range and calibration
    rows = []
    for combo in COMBOS:
        name, fmt, activation, per_channel = combo
        label = f"{name}-{fmt}-{activation}-{'pc' if per_channel else 'pt'}"
        rows.append((label, *measure(*combo)))
        steps, share, top1 = rows[-1][1:]
        print(f"  {label:36s} max {steps} steps, {share:6.2%} differ, top-1 {top1:7.2%}", flush=True)
    print(f"int8 import vs onnxruntime over {len(rows)} models: "
          f"max {max(r[1] for r in rows)} steps (bound {MAX_STEPS}), "
          f"at most {max(r[2] for r in rows):.2%} of outputs differ (bound {MAX_DIFFERING:.0%}), "
          f"top-1 agreement >= {min(r[3] for r in rows):.2%} (bound 99%)")


if __name__ == "__main__":
    main()
