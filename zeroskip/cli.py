"""The ``zeroskip`` command: convert, inspect, run, bench, sweep, demo.

Any ``ZeroskipError`` (and any unreadable input file) prints one line and exits with code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import sys
import time

import numpy as np

import zeroskip
from zeroskip.engine.plan import MODES
from zeroskip.report import plan_table, shape_text as _shape, size_text as _size, summary, weight_table

EXIT_ERROR = 2


# -- helpers ------------------------------------------------------------------------------------
def _open_model(path: str) -> "zeroskip.Model":
    if not os.path.exists(path):
        raise zeroskip.ModelFormatError(f"{path}: no such file")
    if path.lower().endswith(".onnx"):
        return zeroskip.import_onnx(path)
    return zeroskip.load(path)


def _read_inputs(specs: list[str], session) -> dict:
    """``--input`` values: ``x.npy`` (the next unnamed input), ``name=x.npy``, or ``x.npz`` (by name)."""
    feeds = {}
    unnamed = [v.name for v in session.inputs]
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = None, spec
        loaded = _load_arrays(f"--input {spec}", path)
        if isinstance(loaded, dict):
            feeds.update(loaded)
            continue
        if name is None:
            remaining = [n for n in unnamed if n not in feeds]
            if not remaining:
                raise zeroskip.InputError(f"--input {spec}: every model input already has a value")
            name = remaining[0]
        feeds[name] = loaded
    return feeds


# -- commands -----------------------------------------------------------------------------------
def cmd_convert(args) -> int:
    """Import, optionally factorize, prune and quantize (in that order), save, and report."""
    from .report import compression_rows, compression_table

    source = _open_model(args.input)
    compressing = args.prune is not None or args.quantize or args.low_rank is not None
    for flag, given in (("--structure", args.structure), ("--scope", args.scope),
                        ("--method", args.method),
                        ("--activations", args.activations), ("--calibration", args.calibration)):
        if given is not None and not compressing:
            raise zeroskip.CompressionError(f"{flag} needs --prune, --quantize or --low-rank")
    if args.exclude and args.prune is None:
        raise zeroskip.CompressionError("--exclude needs --prune")
    if args.quantize and args.calibration is None:
        raise zeroskip.CompressionError("--quantize needs --calibration FILE (.npy samples, batch "
                                        "first, or an .npz of inputs by name)")
    calibration = _load_arrays("--calibration", args.calibration) if args.calibration else None
    evaluation = None
    if args.eval:
        x, y = (_load_arrays("--eval", path) for path in args.eval)
        evaluation = (x, np.asarray(y).reshape(-1))
    model = source
    if args.low_rank is not None:
        from .compress import low_rank

        model = low_rank(model, energy=args.low_rank)
    if args.prune is not None:
        model = zeroskip.prune(model, args.prune, args.structure or "unstructured",
                               args.scope or "global", exclude=tuple(args.exclude or ()))
    if args.quantize:
        model = zeroskip.quantize(model, calibration, method=args.method or "minmax",
                                  activations=args.activations or "uint8",
                                  progress=sys.stderr.isatty())
    zeroskip.save(model, args.output)
    saved = zeroskip.load(args.output)
    print(f"wrote {args.output}: {len(saved.graph.nodes)} nodes, "
          f"{_size(os.path.getsize(args.output))}")
    report = {"input": args.input, "output": args.output,
              "bytes": os.path.getsize(args.output)}
    if compressing:
        rows = compression_rows(source, saved)
        print()
        print(compression_table(rows))
        report["layers"] = rows
        for key in ("pruning", "quantization", "low_rank"):
            if key in saved.metadata:
                report[key] = saved.metadata[key]
    if evaluation is not None:
        report["accuracy"] = {}
        for label, m in (("input", source), ("output", saved)):
            acc = _top1(m, *evaluation)
            report["accuracy"][label] = acc
            print(f"top-1 accuracy, {label} model: {acc * 100:.2f} % "
                  f"({len(evaluation[1])} samples)")
    if args.report:
        _write_json(args.report, report)
        print(f"wrote {args.report}")
    return 0


def _load_arrays(flag: str, path: str):
    """An .npy array, or an .npz's arrays as a feed dict."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise zeroskip.InputError(f"{flag}: cannot read {path} ({err})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    return loaded


def _top1(model, x, labels) -> float:
    """Share of samples whose largest output is the label (the model's first output, (N, C))."""
    session = zeroskip.Session(model, mode="auto" if _is_int8(model) else "dense-f32")
    feeds = x if isinstance(x, dict) else {session.inputs[0].name: x}
    out = next(iter(session.run(feeds).values()))
    if out.ndim != 2 or len(out) != len(labels):
        raise zeroskip.InputError(f"--eval: the model's output has shape {_shape(out.shape)}, "
                                  f"expected ({len(labels)}, classes) for {len(labels)} labels")
    return float(np.mean(out.argmax(axis=1) == labels))


def _is_int8(model) -> bool:
    return any(t.quant is not None for t in model.graph.initializers.values())


def _write_json(path: str, value) -> None:
    """Write JSON atomically (``report.atomic_write``)."""
    import json

    from .report import atomic_write

    def write(f):
        json.dump(value, f, indent=2, default=_json_default)
        f.write("\n")

    atomic_write(path, write, binary=False)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def cmd_inspect(args) -> int:
    model = _open_model(args.file)
    print(summary(model))
    print()
    print(weight_table(model))
    if args.plan:
        if args.batch is not None and args.batch < 1:
            raise zeroskip.InputError(f"--batch must be at least 1, got {args.batch}")
        rows = zeroskip.Session(model, mode=args.mode).explain(batch=args.batch)
        print()
        chunk = rows[0].get("chunk") if rows else None
        print(f"plan for mode {args.mode}" + ("" if args.batch is None else
                                                f", batch {args.batch}") +
              ("" if chunk is None else f", run in chunks of {chunk} (the cache)") + ":")
        print(plan_table(rows))
    return 0


def cmd_run(args) -> int:
    session = zeroskip.Session(_open_model(args.file), mode=args.mode, threads=args.threads)
    if args.dask:
        return _run_on_dask(args, session)
    feeds = _read_inputs(args.input, session)
    start = time.perf_counter()
    outputs = session.run(feeds)
    elapsed = time.perf_counter() - start
    return _report_run(args, outputs, f"ran in {elapsed * 1e3:.2f} ms (mode {session.mode})")


def _run_on_dask(args, session) -> int:
    """``run --dask SCHEDULER``: the input (one .npy, memory-mapped) in chunks of --batch rows,
    scored on Dask with a progress bar; the outputs as with a plain run."""
    try:
        import dask.array as da
        import distributed
    except ImportError:
        raise zeroskip.InputError("--dask needs Dask: pip install 'zeroskip[dask]'") from None
    from tqdm import tqdm

    from . import dask as zs_dask

    if len(args.input) != 1 or "=" in args.input[0] or not args.input[0].endswith(".npy"):
        raise zeroskip.InputError("--dask takes one --input, an .npy of the model's single input "
                                  "(it is memory-mapped, not read whole)")
    try:
        x = np.load(args.input[0], mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise zeroskip.InputError(f"--input {args.input[0]}: cannot read it ({err})") from None
    batch = args.batch or 256
    if batch < 1:
        raise zeroskip.InputError(f"--batch must be at least 1, got {batch}")
    lazy = zs_dask.run(session, da.from_array(x, chunks=(batch,) + x.shape[1:]), batch=batch)
    name = session.outputs[0].name
    cluster = None
    target = args.dask
    if target.startswith("local"):
        workers = int(target.partition(":")[2] or 2)
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1,
                                           processes=True, dashboard_address=None)
        target = cluster
    start = time.perf_counter()
    try:
        with distributed.Client(target) as client:
            blocks = lazy.to_delayed().ravel()
            futures = client.compute(list(blocks))
            for _ in tqdm(distributed.as_completed(futures), total=len(futures), desc="chunks",
                          disable=not sys.stderr.isatty()):
                pass
            result = np.concatenate(client.gather(futures))
    finally:
        if cluster is not None:
            cluster.close()
    elapsed = time.perf_counter() - start
    return _report_run(args, {name: result},
                       f"ran {len(result)} rows in {elapsed:.2f} s on Dask ({args.dask}), "
                       f"{len(result) / elapsed:.1f} rows/s, chunks of {batch} "
                       f"(mode {session.mode})")


def _report_run(args, outputs: dict, timing: str) -> int:
    """``run``'s ending, local or on Dask: each output summarized, the timing, --output saved."""
    _summarize(outputs)
    print(timing)
    if args.output:
        _save_npz(args.output, outputs)
        print(f"wrote {args.output}")
    return 0


def _summarize(outputs: dict) -> None:
    for name, value in outputs.items():
        line = f"{name}: shape {_shape(value.shape)} {value.dtype}"
        if value.size and value.dtype.kind in "fiu":
            line += f"  min {value.min():.6g}  max {value.max():.6g}  mean {value.mean():.6g}"
        if value.ndim == 2 and value.shape[1] > 1:
            top = value.argmax(axis=1)[:10]
            line += "  argmax[:10] " + " ".join(str(int(t)) for t in top)
        print(line)


def _save_npz(path: str, arrays: dict) -> None:
    """Write an .npz atomically, so an existing file is never left half-written."""
    from .report import atomic_write

    atomic_write(path, lambda f: np.savez(f, **arrays))


def cmd_bench(args) -> int:
    from . import bench

    model = _open_model(args.file)
    modes = _bench_modes(args, model)
    batches = _int_list("--batch", args.batch) if args.batch else None
    threads = _int_list("--threads", args.threads) if args.threads else [None]
    peers = _bench_peers(args)
    repeat = args.repeat if args.repeat is not None else args.rounds
    if repeat is None:
        repeat = 20
    if repeat < 1:
        raise zeroskip.InputError(f"--repeat must be at least 1, got {repeat}")
    inputs = None
    if args.input:
        if batches is not None:
            raise zeroskip.InputError("give --batch or --input, not both: real inputs have their "
                                      "own batch")
        inputs = _read_inputs(args.input, zeroskip.Session(model, mode="reference"))
        first = next(iter(inputs.values()))
        batches = [int(np.shape(first)[0]) if np.ndim(first) else 1]
    batches = batches or [1]
    onnx_path = args.onnx or (args.file if args.file.lower().endswith(".onnx") else None)
    if args.profile:
        feeds = inputs if inputs is not None else bench.synthetic_inputs(model.graph.inputs,
                                                                         batches[0])
        args.threads = threads[0]
        args.rounds = repeat
        return _bench_profile(bench, model, modes, feeds, args,
                              onnx_path if "onnxruntime" in peers else None)
    _need_matplotlib(args)
    result = bench.bench_matrix(model, modes, peers, batches, threads, repeat,
                                model_bytes=os.path.getsize(args.file), onnx_path=onnx_path,
                                inputs=inputs, progress=sys.stderr.isatty(),
                                onnx_is_other_file=bool(args.onnx))
    shapes = ", ".join(f"{v.name} {_shape(v.shape)}" for v in model.graph.inputs)
    machine = result["machine"]
    print(f"{os.path.basename(args.file)}: {shapes}; {repeat} interleaved rounds per batch and "
          f"thread count; {machine['cpu']}, {machine['cores']} cores, "
          f"{' '.join(machine['isa']) or 'no SIMD extensions found'}")
    print(bench.matrix_table(result["rows"]))
    print("median, p10–p90: over the timed runs; samples/s: batch / median; vs: the median of "
          f"{result['rows'][0]['baseline']} at the same batch and threads over this row's; 1st run: "
          "JIT compile or cache load, apart from the timings")
    return _finish(args, result, bench.plot_matrix)


def _finish(args, result: dict, plot) -> int:
    """The notes of a bench or sweep, then its --json and --plot files."""
    for note in result["notes"]:
        print(f"note: {note}")
    if args.json:
        _write_json(args.json, result)
        print(f"wrote {args.json}")
    if args.plot:
        plot(result, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _need_matplotlib(args) -> None:
    """--plot needs the plot extra: say so before measuring anything."""
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise zeroskip.InputError("--plot needs matplotlib: pip install 'zeroskip[plot]'") \
                from None


def _int_list(flag: str, text: str) -> list[int]:
    """"1,64" -> [1, 64]: positive integers."""
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        raise zeroskip.InputError(f"{flag} {text}: expected positive integers separated by "
                                  f"commas, such as 1,64") from None
    if not values or min(values) < 1:
        raise zeroskip.InputError(f"{flag} {text}: expected positive integers separated by "
                                  f"commas, such as 1,64")
    return values


def _bench_modes(args, model) -> list[str]:
    from . import bench

    modes = list(args.mode or [])
    if args.modes:
        if args.modes == "all":
            modes += [m for m in MODES if m != "reference" and m not in modes
                      and (m.endswith("f32") or m == "auto" or _is_int8(model))]
        else:
            for mode in args.modes.split(","):
                if mode not in MODES:
                    raise zeroskip.InputError(f"--modes: {mode!r} is not a mode; choose from "
                                              f"{', '.join(MODES)} or all")
                modes.append(mode)
    modes = modes or bench.default_modes(model)
    if "dense-f32" in modes:  # the baseline of every speed-up
        modes = ["dense-f32"] + [m for m in modes if m != "dense-f32"]
    return list(dict.fromkeys(modes))


def _bench_peers(args) -> list[str]:
    from .bench import PEERS

    if args.peers is None:
        peers = ["onnxruntime", "onnxruntime-int8", "numpy"]
    elif args.peers == "none":
        peers = []
    else:
        peers = []
        for peer in args.peers.split(","):
            if peer not in PEERS:
                raise zeroskip.InputError(f"--peers: {peer!r} is not a peer; choose from "
                                          f"{', '.join(PEERS)} or none")
            peers += [peer] + (["onnxruntime-int8"] if peer == "onnxruntime" else [])
    if args.no_onnxruntime:
        peers = [p for p in peers if not p.startswith("onnxruntime")]
    return list(dict.fromkeys(peers))


def _bench_profile(bench, model, modes, feeds, args, onnx_path) -> int:
    """``zeroskip bench --profile``: where the time goes, per node, in each mode (and in
    onnxruntime's own profile of the same file)."""
    theirs = bench.onnxruntime_profile(onnx_path, feeds, args.threads, args.rounds) \
        if onnx_path else None
    shapes = ", ".join(f"{name} {_shape(v.shape)}" for name, v in feeds.items())
    print(f"{os.path.basename(args.file)}: {shapes}; median of {args.rounds} runs per node, threads "
          f"{args.threads or 'default'}")
    for mode in modes:
        profile = zeroskip.Session(model, mode=mode, threads=args.threads).profile(
            feeds, repeats=args.rounds)
        how = ("each kernel call timed inside replayed runs; outside the calls"
               if profile.replayed else "steps run one by one; the executor between steps")
        print(f"\n{mode}: run {profile.run_ms:.3f} ms ({how} {profile.overhead_ms:.3f} ms)")
        print(bench.profile_table(profile, theirs))
    if theirs is not None:
        run = "" if theirs["run_ms"] is None else f": run {theirs['run_ms']:.3f} ms"
        print(f"\nonnxruntime's own profile (enable_profiling){run}")
        print(bench.onnxruntime_table(theirs))
    print("\neff GMAC/s: the dense layer's multiply-accumulates per second; useful: those with a "
          "nonzero weight")
    return 0


def cmd_sweep(args) -> int:
    """Dense against CSR kernels per layer across sparsities, and the break-even sparsities."""
    from . import sweep

    if args.sparsities and args.densities:
        raise zeroskip.InputError("give --sparsities or --densities, not both")
    if args.densities:
        levels = [1.0 - d for d in _float_list("--densities", args.densities)]
    else:
        levels = _float_list("--sparsities", args.sparsities) if args.sparsities else \
            list(sweep.SPARSITIES)
    if len(levels) < 2:
        raise zeroskip.InputError("the sweep needs at least two sparsities to find a crossing")
    batch = _int_list("--batch", args.batch)[0] if args.batch else 1
    kinds = args.kinds.split(",") if args.kinds else list(sweep.KINDS)
    for kind in kinds:
        if kind not in sweep.KINDS:
            raise zeroskip.InputError(f"--kinds: {kind!r} is not f32 or i8")
    if os.path.exists(args.target):
        layers = sweep.model_layers(_open_model(args.target), batch)
        if not layers:
            raise zeroskip.InputError(f"{args.target}: no Conv, Gemm or MatMul layer with a "
                                      f"constant weight and a known input shape")
    else:
        layer = sweep.parse_shape(args.target)
        if layer["op"] == "Conv":
            layer["x_shape"] = (batch,) + layer["x_shape"][1:]
        layers = [layer]
    if args.layer:
        layers = [x for x in layers if x["name"] in args.layer]
        if not layers:
            raise zeroskip.InputError(f"--layer: no layer named {', '.join(args.layer)}")
    _need_matplotlib(args)
    result = sweep.sweep(layers, levels, kinds, _int_list("--threads", args.threads)[0]
                         if args.threads else None, progress=sys.stderr.isatty())
    from .bench import machine_info

    result["machine"] = machine_info()
    result["settings"] = {"target": args.target, "sparsities": levels, "kinds": kinds,
                          "batch": batch, "threads": args.threads}
    print(f"{args.target}: {len(layers)} layers, batch {batch}, threads "
          f"{args.threads or 'default'}; {result['machine']['cpu']}")
    print(sweep.sweep_table(result))
    print("dense/sparse ms: the best of auto's timing runs of the dense and the sparse mode's "
          "kernel on the layer's own shapes; these timings are auto's cached ones, so auto picks "
          "what this table shows")
    return _finish(args, result, sweep.plot_sweep)


def _float_list(flag: str, text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise zeroskip.InputError(f"{flag} {text}: expected numbers in [0, 1) separated by "
                                  f"commas") from None
    if not values or not all(0.0 <= v < 1.0 or (flag == "--densities" and v == 1.0)
                             for v in values):
        raise zeroskip.InputError(f"{flag} {text}: expected numbers in [0, 1) separated by "
                                  f"commas")
    return values


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(threads=args.threads)


# -- entry point --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zeroskip", description="Run pruned and int8-quantized MLPs and CNNs on the CPU.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"zeroskip {zeroskip.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "convert", help="convert an ONNX model to .zsk, optionally pruned and quantized",
        description="Import an ONNX (or .zsk) model and save it as a validated .zsk file. With the "
                    "compression flags it is first factorized (--low-rank), then pruned (--prune), "
                    "then quantized (--quantize), and a per-layer table is printed.")
    p.add_argument("input", help="model.onnx (or a float .zsk)")
    p.add_argument("output", help="model.zsk (written atomically)")
    p.add_argument("--prune", type=float, metavar="SPARSITY",
                   help="prune to this sparsity, in [0, 1)")
    p.add_argument("--structure", metavar="S",
                   help="unstructured (default), channel, n:m such as 2:4, or block:RxC")
    p.add_argument("--scope", choices=("global", "layer"),
                   help="one threshold across layers (global, default) or per layer")
    p.add_argument("--exclude", action="append", metavar="NODE",
                   help="leave this layer (a node name or an op type) unpruned; repeat for more "
                        "(a stem of 3 input channels, say, which block:1x4 does not divide)")
    p.add_argument("--quantize", action="store_true", help="quantize to int8 (needs --calibration)")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration inputs: .npy (batch first) or .npz (inputs by name)")
    p.add_argument("--method", choices=("minmax", "percentile", "mse", "entropy"),
                   help="how calibration chooses activation ranges (default: minmax)")
    p.add_argument("--activations", choices=("uint8", "int8"),
                   help="activation type (default: uint8)")
    p.add_argument("--low-rank", type=float, metavar="ENERGY",
                   help="factorize each layer keeping this share of its singular-value energy")
    p.add_argument("--eval", nargs=2, metavar=("X", "Y"),
                   help="inputs (.npy/.npz) and labels (.npy): print both models' top-1 accuracy")
    p.add_argument("--report", metavar="FILE", help="write the report as JSON (atomically)")
    p.set_defaults(func=cmd_convert)

    p = commands.add_parser("inspect", help="print a model's nodes and weights",
                            description="Print a model's summary and a table of its weights: node, "
                                        "op, shape, layout, density, dtype and bytes.")
    p.add_argument("file", help="a .zsk or .onnx file")
    p.add_argument("--plan", action="store_true",
                   help="also print the execution plan: the kernel chosen for each node, and why")
    p.add_argument("--mode", default="reference", choices=MODES,
                   help="the mode to plan for, with --plan (default: reference)")
    p.add_argument("--batch", type=int, default=None,
                   help="with --plan: the batch to plan for (auto chooses per batch class; "
                        "default: batch 1)")
    p.set_defaults(func=cmd_inspect)

    p = commands.add_parser("run", help="run a model on .npy inputs",
                            description="Run a model and print its output shapes and a summary.")
    p.add_argument("file", help="a .zsk or .onnx file")
    p.add_argument("--input", action="append", default=[], metavar="[NAME=]FILE",
                   help="an .npy for the next input, NAME=x.npy for a named one, or an .npz "
                        "holding inputs by name; repeat for several inputs")
    p.add_argument("--output", metavar="FILE", help="write the outputs to this .npz")
    p.add_argument("--mode", default="reference", choices=MODES,
                   help="execution mode (default: reference)")
    p.add_argument("--threads", type=int, default=None, help="number of threads")
    p.add_argument("--dask", metavar="SCHEDULER",
                   help="score on Dask: a scheduler address (tcp://host:8786), or local:N for N "
                        "worker processes on this machine (the dask extra)")
    p.add_argument("--batch", type=int, default=None,
                   help="with --dask: rows per task (default: 256)")
    p.set_defaults(func=cmd_run)

    p = commands.add_parser("bench", help="time a model in several modes and peers, side by side",
                            description="Time one model in several modes, and peers (onnxruntime "
                                        "on its ONNX file and on onnxruntime's own int8 "
                                        "quantization of it, plain numpy), in one process, in "
                                        "interleaved rounds, for each batch and thread count; "
                                        "as speed-ups over dense-f32, with planning and "
                                        "first-run (JIT) time apart.")
    p.add_argument("file", help="a .zsk or .onnx file")
    p.add_argument("--modes", metavar="all|MODE,MODE",
                   help="modes to time, comma-separated, or all (every kernel mode that fits the "
                        "model, and auto; default: the dense and sparse modes that apply, and auto)")
    p.add_argument("--mode", action="append", choices=MODES, metavar="MODE",
                   help="a mode to time; repeat for several (as --modes)")
    p.add_argument("--batch", metavar="B,B", help="batch sizes of the random inputs, "
                                                  "comma-separated (default: 1)")
    p.add_argument("--threads", metavar="T,T",
                   help="thread counts, comma-separated (default: each library's own)")
    p.add_argument("--peers", metavar="P,P",
                   help="onnxruntime (the ONNX file, and onnxruntime's int8 quantization of a "
                        "float one), onnxruntime-int8, numpy, or none (default: all)")
    p.add_argument("--onnx", metavar="FILE",
                   help="the ONNX file the onnxruntime peers run, for a .zsk model")
    p.add_argument("--input", action="append", default=[], metavar="[NAME=]FILE",
                   help="real inputs instead of random ones, as for 'run'")
    p.add_argument("--repeat", type=int, default=None,
                   help="interleaved rounds per batch and thread count (default: 20)")
    p.add_argument("--rounds", type=int, default=None, help=argparse.SUPPRESS)  # older name
    p.add_argument("--no-onnxruntime", action="store_true",
                   help="do not time onnxruntime (as --peers without it)")
    p.add_argument("--json", metavar="FILE",
                   help="write every row, the settings and the machine as JSON (atomically)")
    p.add_argument("--plot", metavar="FILE", help="write a PNG bar chart (the plot extra)")
    p.add_argument("--profile", action="store_true",
                   help="where the time goes: a per-node table for each mode (median of --repeat "
                        "runs), beside onnxruntime's own profile of an .onnx file")
    p.set_defaults(func=cmd_bench)

    p = commands.add_parser("demo", help="run the bundled digits models in every mode",
                            description="Run the bundled digits MLP, its pruned and its int8 variant "
                                        "on the bundled test images in every mode that fits, and "
                                        "print accuracy, latency and file size.")
    p.add_argument("--threads", type=int, default=None, help="number of threads")
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser(
        "sweep", help="will pruning help on my CPU? dense vs CSR per layer across sparsities",
        description="Time the dense and the sparse mode's kernels (f32 and i8) on each weight "
                    "layer of a model, or on one layer shape, across sparsities, and print the "
                    "break-even sparsity of each layer and kernel pair. The timings are auto's "
                    "own, read from and written to its per-machine cache.")
    p.add_argument("target", help="a .zsk or .onnx file, or a shape: gemm:MxKxN or "
                                  "conv:CxHxW:NxKhxKw[:sS][:pP]")
    p.add_argument("--sparsities", metavar="S,S",
                   help="sparsities to time (default: 0,0.5,0.7,0.8,0.9,0.95,0.98)")
    p.add_argument("--densities", metavar="D,D", help="or the densities (1 − sparsity)")
    p.add_argument("--kinds", metavar="f32,i8", help="kernel pairs (default: f32,i8)")
    p.add_argument("--batch", metavar="B", help="batch of the layers' inputs (default: 1)")
    p.add_argument("--threads", metavar="T", help="number of threads (default: Numba's)")
    p.add_argument("--layer", action="append", metavar="NAME",
                   help="only this layer of the model; repeat for several")
    p.add_argument("--json", metavar="FILE", help="write the timings and break-evens as JSON")
    p.add_argument("--plot", metavar="FILE", help="write latency against sparsity as a PNG")
    p.set_defaults(func=cmd_sweep)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Once Numba is loaded, the interpreter's final garbage collection walks its registries: about
    # 0.3 s at every exit of this command. Freezing the heap at exit skips that walk.
    atexit.register(gc.freeze)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (zeroskip.ZeroskipError, OSError) as err:
        if args.debug:
            raise
        kind = type(err).__name__
        print(f"zeroskip: error: {kind}: {err}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
