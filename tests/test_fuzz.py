"""The structure-aware fuzzer (bench/fuzz_zsk.py): a seeded subset of its cases, the harness's own
ability to see each kind of failure, and one regression test per bug it found.

The full run is ``python bench/fuzz_zsk.py --cases 10000`` (figures in docs/security.md)."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import zeroskip
from zeroskip import ModelFormatError, Session
from zeroskip.formats.zsk import loads
from zeroskip.quantmath import clamp_bounds

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
import fuzz_zsk  # noqa: E402

DATA = Path(zeroskip.__file__).parent / "data"
SAVED = Path(__file__).parent / "data" / "fuzz"
CI_CASES = int(os.environ.get("ZEROSKIP_FUZZ_CASES", "400"))


@pytest.fixture(scope="module")
def seeds():
    return fuzz_zsk.seed_files()


def test_every_seed_file_is_valid_and_runs(seeds):
    assert len(seeds) >= 12
    kinds = set()
    for name, blob in seeds.items():
        model = loads(blob)
        kinds |= {tensor.layout for tensor in model.graph.initializers.values()}
        kinds |= {"int8" for tensor in model.graph.initializers.values() if tensor.quant is not None}
        kinds |= {node.op for node in model.graph.nodes}
        assert fuzz_zsk.ZskFile.parse(blob).seal() == blob, name  # re-sealing changes nothing
    assert {"dense", "csr", "int8", "Conv", "QConv", "MaxPool", "QMaxPool", "AveragePool",
            "GlobalAveragePool", "QAdd", "Gemm", "QGemm"} <= kinds


def test_a_seeded_subset_gives_only_successes_and_zeroskip_errors(seeds, tmp_path):
    """CI's share of the 10 000-case run: every outcome a success or a ZeroskipError, and the
    mutations reach every stage (loads refused, sessions refused, runs), not only the checksum."""
    result = fuzz_zsk.fuzz(CI_CASES, seed=20261202, workers=2, out=str(tmp_path), seeds=seeds,
                           progress=False)
    assert result["failures"] == [], json.dumps(result["failures"][:3], indent=1)[:4000]
    outcomes = result["outcomes"]
    assert sum(outcomes.values()) == CI_CASES
    assert outcomes["ran"] >= CI_CASES // 20 and outcomes["refused at load"] >= CI_CASES // 4
    assert outcomes["refused at session"] >= CI_CASES // 50
    checksum = sum(n for reason, n in result["reasons"].items() if "CRC" in reason)
    assert checksum < CI_CASES // 5  # re-sealing lets most mutations past the checksums
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kind, outcome", [("error", "error"), ("crash", "crash"),
                                           ("hang", "hang"), ("memory", "memory")])
def test_the_harness_sees_every_kind_of_failure_and_saves_the_file(seeds, tmp_path, kind, outcome):
    wait = 20.0 if kind == "memory" else 3.0  # (touching 1.5 GiB is slow on a busy machine)
    result = fuzz_zsk.fuzz(1, seed=0, workers=1, timeout=wait, out=str(tmp_path), seeds=seeds,
                           selftest=kind, progress=False, compile_allowance=wait)
    assert [f["outcome"] for f in result["failures"]] == [outcome]
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert saved == ["case-000000.json", "case-000000.zsk"]
    record = json.loads((tmp_path / "case-000000.json").read_text())
    assert record["outcome"] == outcome and record["mutations"]


def test_nothing_on_the_load_path_can_run_code():
    """docs/security.md: loading parses JSON and views arrays; no pickle, eval or dynamic import
    in the modules a .zsk load runs (the reader, the IR, the op table, the errors)."""
    import ast

    root = Path(zeroskip.__file__).parent
    for module in ("formats/zsk.py", "model.py", "ops.py", "errors.py"):
        tree = ast.parse((root / module).read_text(encoding="utf-8"))
        nodes = list(ast.walk(tree))
        called = {n.func.id if isinstance(n.func, ast.Name) else ast.unparse(n.func)
                  for n in nodes if isinstance(n, ast.Call)}
        imported = {a.name.split(".")[0] for n in nodes if isinstance(n, ast.Import)
                    for a in n.names} | {(n.module or "").split(".")[0] for n in nodes
                                         if isinstance(n, ast.ImportFrom) and not n.level}
        keywords = {k.arg for n in nodes if isinstance(n, ast.Call) for k in n.keywords}
        assert not called & {"eval", "exec", "compile", "__import__", "importlib.import_module",
                             "np.load", "numpy.load", "pickle.loads"}, module
        assert not imported & {"pickle", "marshal", "shelve", "importlib", "dill"}, module
        assert not keywords & {"allow_pickle", "object_hook"}, module


def test_cases_are_reproducible_from_their_index(seeds):
    a, b = (fuzz_zsk.make_case(123, seeds, 7) for _ in range(2))
    assert a.blob == b.blob and a.mutations == b.mutations and a.mode == b.mode
    assert fuzz_zsk.make_case(124, seeds, 7).blob != a.blob


@pytest.mark.parametrize("path", sorted(SAVED.glob("*.zsk")), ids=lambda p: p.stem)
def test_saved_fuzz_failures_now_run_or_end_in_their_error(path):
    """Each file the fuzzer once failed on now gives what its record expects: "ran" (a fix made
    it valid, e.g. a default filled in) or the ZeroskipError it is refused with."""
    record = json.loads(path.with_suffix(".json").read_text())
    try:
        session = Session(zeroskip.load(path), mode=record["mode"])
        session.run(fuzz_zsk._feeds(session))
        outcome = "ran"
    except zeroskip.ZeroskipError as err:
        outcome = f"{type(err).__name__}: {err}"
    assert outcome == record["expect"]


def test_the_saved_failures_are_there():
    assert len(list(SAVED.glob("*.zsk"))) >= 8


# -- regressions: one per bug the fuzzer found -----------------------------------------------------
def rewritten(name: str, change) -> bytes:
    """Demo model ``name`` with its header changed by ``change(header)``, re-sealed."""
    f = fuzz_zsk.ZskFile.parse((DATA / f"{name}.zsk").read_bytes())
    change(f.header)
    return f.seal()


def node_of(header, name):
    return next(n for n in header["graph"]["nodes"] if n["name"] == name)


@pytest.mark.parametrize("name, node, attr, mode", [
    ("digits_mlp", "/fc2/Gemm", "transA", "dense-f32"),
    ("digits_cnn_int8", "/conv2/Conv", "clip_min", "auto"),
    ("digits_cnn_int8", "/conv2/Conv", "dilations", "dense-i8"),
    ("digits_cnn_int8", "/conv2/Conv", "auto_pad", "sparse-i8"),
])
def test_an_optional_attribute_left_out_takes_its_default(name, node, attr, mode):
    """Found by the fuzzer: a step builder read a missing attribute (KeyError). Each of these
    attributes was stored with its default value, so the outputs stay those of the original."""
    blob = rewritten(name, lambda h: node_of(h, node)["attrs"].pop(attr))
    model = loads(blob)
    original = zeroskip.load(DATA / f"{name}.zsk")
    default = {"transA": 0, "clip_min": None, "dilations": None, "auto_pad": "NOTSET"}[attr]
    assert next(n for n in model.graph.nodes if n.name == node).attrs[attr] == default
    feeds = fuzz_zsk._feeds(Session(original, mode="reference"))
    got, want = (Session(m, mode=mode).run(feeds) for m in (model, original))
    assert all(got[k].tobytes() == want[k].tobytes() for k in want)


@pytest.mark.parametrize("name, node, attr, value, message", [
    ("digits_cnn_int8", "/conv1/Conv", "y_zero_point", 10**30,
     "attribute y_zero_point = 1000000000000000000000000000000 is outside the range of uint8 "
     "[0, 255]"),
    ("digits_mlp_int8", "logits/dequantize", "x_zero_point", 300,
     "attribute x_zero_point = 300 is outside the range of uint8 [0, 255]"),
    ("digits_cnn_int8", "/conv1/Conv", "y_scale", 1e39,
     "attribute 'y_scale' must be a number finite and > 0 as float32, not 1e+39"),
    ("digits_cnn_int8", "/conv1/Conv", "clip_max", 10**400,
     "attribute 'clip_max' must be a number, or null, not 1000000000000000000000000000000000000"),
    ("digits_cnn_int8", "/conv2/Conv", "strides", [2, 2**64],  # (found on a ResNet-18 file)
     "attribute 'strides' must be a list of integers (each at least 1, at most 16777216), or "
     "null, not [2, 18446744073709551616]"),
])
def test_a_quantization_attribute_out_of_range_is_refused(name, node, attr, value, message):
    """Found by the fuzzer: OverflowError in a kernel call or in the clamp bounds, and a scratch
    array sized by a stride of 2**64."""
    def change(header):
        node_of(header, node)["attrs"][attr] = value
    with pytest.raises(ModelFormatError, match=r"^node '[^']+' \(\w+\): " + _escape(message)):
        for mode in ("reference", "dense-i8", "sparse-i8", "auto"):
            Session(loads(rewritten(name, change)), mode=mode)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_clip_bounds_past_the_type_saturate_at_its_ends():
    """Found by the fuzzer: clip_max = -1e308 over a small scale overflowed int()."""
    assert clamp_bounds("uint8", 1e-30, 3, -1e308, 1e308) == (0, 255)
    assert clamp_bounds("uint8", 1e-30, 3, 1e308, None) == (255, 255)  # Clip(min=huge): all max
    assert clamp_bounds("int8", 0.5, 0, None, -1e308) == (-128, -128)
    assert clamp_bounds("int8", 0.1, 0, 0.0, 6.0) == (0, 60)
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    blob = rewritten("digits_cnn_int8", lambda h: node_of(h, "/conv1/Conv")["attrs"].update(
        clip_max=-1e308))
    outs = [Session(loads(blob), mode=m, threads=1).run({"image": x})["logits"]
            for m in ("reference", "dense-i8", "sparse-i8")]
    assert all(o.tobytes() == outs[0].tobytes() for o in outs)
