"""Reliability: nothing may crash, hang or lose data.

- **Crash-safe saving.** A save killed (SIGKILL) at random moments over an existing file leaves the
  old model or the new one, whole, never a mix or a file that fails to load. The temporary files of
  killed saves are removed by the next save of the same path, and never one that a running save
  holds. A save that cannot write (a missing or read-only directory) raises a ``SaveError`` naming
  the path and the reason, and leaves nothing behind.
- **Threads.** One Session shared by four Python threads gives each input, run after run, the bytes
  a single thread gets, in every mode, at threads=1 and threads=2, for an int8 MLP and an int8 CNN.
  (tests/test_modes.py runs default-thread sessions of the CNN from four threads in the four kernel
  modes; tests/test_session.py a float MLP, against NumPy.)
- **Read-only installs.** When the package directory is not writable, Numba caches the kernels in
  the user's cache directory and everything runs; when nothing is writable but the temporary
  directory, in a private directory there, removed at exit (zeroskip/kernels/__init__.py).
"""

from __future__ import annotations

import os
import random
import select
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import zeroskip
from zeroskip import Dense, Graph, Model, Node, ValueInfo, ZeroskipError
from zeroskip.demo import load_images
from zeroskip.engine.plan import MODES
from zeroskip.formats import zsk
from zeroskip.ops import normalize_attrs

from test_modes import _quantized

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
POSIX_ONLY = pytest.mark.skipif(os.name != "posix", reason="needs POSIX permissions and pipes")


# ================================================================================================
# Crash-safe saving
# ================================================================================================

LAYERS, WIDTH = 4, 2048
"""The killed saves' model: four float32 Gemm weights of 2048×2048, a 64 MB file (a save takes
50–200 ms: long enough for a kill to land in the middle of the write)."""
KILLS = 24


def big_model(seed: int) -> Model:
    """A chain of WIDTH×WIDTH Gemms whose every weight differs from the other seed's (by 0.5)."""
    ramp = np.arange(WIDTH * WIDTH, dtype=np.int64).reshape(WIDTH, WIDTH)
    weights = {f"w{i}": Dense(((ramp + 7919 * i) % 65521).astype(np.float32) + 0.25 + 0.5 * seed)
               for i in range(LAYERS)}
    names = ["x"] + [f"h{i}" for i in range(1, LAYERS)] + ["y"]
    nodes = [Node(f"fc{i}", "Gemm", [names[i], f"w{i}", ""], [names[i + 1]],
                  normalize_attrs("Gemm", {"transB": 1})) for i in range(LAYERS)]
    graph = Graph(nodes, [ValueInfo("x", (None, WIDTH), "float32")],
                  [ValueInfo("y", (None, WIDTH), "float32")], weights)
    return Model(graph, {"seed": seed})


def small_model(seed: int = 0) -> Model:
    rng = np.random.default_rng(seed)
    node = Node("fc", "Gemm", ["x", "w", ""], ["y"], normalize_attrs("Gemm", {"transB": 1}))
    graph = Graph([node], [ValueInfo("x", (None, 6), "float32")],
                  [ValueInfo("y", (None, 3), "float32")],
                  {"w": Dense(rng.standard_normal((3, 6)).astype(np.float32))})
    return Model(graph, {"seed": seed})


def same_model(got: Model, want: Model) -> bool:
    """Whether ``got`` holds exactly ``want``'s weights and metadata (reading ``got``'s arrays runs
    their CRC checks)."""
    a, b = got.graph.initializers, want.graph.initializers
    return (a.keys() == b.keys() and got.metadata == want.metadata
            and all(np.array_equal(a[k].to_numpy(), b[k].to_numpy()) for k in b))


def temporaries(folder: Path, target: str) -> set[str]:
    """The temporary files of saves of ``folder/target`` (``.TARGET.XXXXXXXX.tmp``)."""
    return {p.name for p in folder.iterdir()
            if p.name.startswith(f".{target}.") and p.name.endswith(".tmp")}


SAVER = r"""
import sys
from zeroskip.formats.zsk import load, save

models = [load(path, verify="eager") for path in sys.argv[1:3]]  # read and checked before saving
out = sys.stdout.buffer
out.write(b"r"); out.flush()                    # ready
which = sys.stdin.buffer.read(1)                # which model to save over the target
if which in (b"0", b"1"):
    out.write(b"s"); out.flush()                # saving starts now
    save(models[int(which)], sys.argv[3])
    out.write(b"d"); out.flush()                # done
"""


def spawn_saver(sources, target) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SAVER, *map(str, sources), str(target)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            bufsize=0)


def expect(proc: subprocess.Popen, byte: bytes, timeout: float = 120):
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    got = proc.stdout.read(1) if ready else b""
    if got != byte:
        proc.kill()
        raise AssertionError(f"the saver sent {got!r}, not {byte!r} (exit {proc.wait()}): "
                             f"{proc.stderr.read().decode(errors='replace')[-2000:]}")


def stop(proc: subprocess.Popen):
    proc.kill()
    proc.wait(timeout=60)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        pipe.close()


@POSIX_ONLY
def test_a_save_killed_at_any_moment_leaves_the_old_model_or_the_new_one(tmp_path):
    """KILLS child processes each save a 64 MB model over the target (the two models in turn) and
    are killed (SIGKILL) after a seeded delay from the moment they start saving; the delays are
    spread evenly over a save's duration and a little past it. After each kill the target loads
    and holds exactly the model it held before or the one being saved. A kill that left a
    temporary file landed between its creation and the rename, mid-write: at least a sixth of
    them must (a third to a half do). The next save removes killed saves' temporary files.
    """
    models = [big_model(0), big_model(1)]
    sources = [tmp_path / "a.zsk", tmp_path / "b.zsk"]
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "m.zsk"
    durations = []
    for model, path in zip(models + models[:1], sources + [target]):
        start = time.perf_counter()
        zsk.save(model, path)
        durations.append(time.perf_counter() - start)
    span = 1.25 * statistics.median(durations)
    rng = random.Random(1234)
    delays = [(i + rng.random()) * span / KILLS for i in range(KILLS)]  # one in each slice
    rng.shuffle(delays)
    current, outcomes, before = 0, Counter(), set()
    saver = spawn_saver(sources, target)  # the next saver loads while the current one is killed
    try:
        for i, delay in enumerate(delays):
            child, saver = saver, spawn_saver(sources, target) if i + 1 < KILLS else None
            new = 1 - current
            expect(child, b"r")
            child.stdin.write(b"%d" % new)
            expect(child, b"s")
            time.sleep(delay)
            stop(child)
            left = temporaries(folder, "m.zsk")
            got = zeroskip.load(target)
            which = [k for k in (current, new) if same_model(got, models[k])]
            del got
            assert which, (f"kill {i}, {delay * 1e3:.1f} ms into the save: the target is neither "
                           f"the model it held nor the one being saved")
            outcomes["renamed" if which == [new] else "mid-write" if left - before
                     else "before writing"] += 1
            current, before = which[0], left
    finally:
        if saver is not None:
            stop(saver)
        for path in sources:  # 64 MB each: not kept with pytest's last temporary directories
            path.unlink()
    summary = f"{dict(outcomes)}, delays up to {span * 1e3:.0f} ms"
    assert sum(outcomes.values()) == KILLS, summary
    assert outcomes["mid-write"] >= KILLS // 6, summary
    zsk.save(models[1 - current], target)
    assert temporaries(folder, "m.zsk") == set(), "a killed save's temporary file was kept"
    assert sorted(os.listdir(folder)) == ["m.zsk"]
    assert same_model(zeroskip.load(target), models[1 - current])
    target.unlink()


def test_a_save_removes_killed_saves_temporaries_but_not_a_running_saves(tmp_path):
    """A running save holds an exclusive flock on its temporary file (here another process holds
    one, as a running save would); a killed save's lock died with it. Files of other targets, or
    not named as a save's temporary file, are not touched."""
    pytest.importorskip("fcntl")
    names = {"killed": ".m.zsk.k1ll3d_0.tmp", "running": ".m.zsk.runn1ng0.tmp",
             "other target": ".m.zsk.bak.k1ll3d_0.tmp", "not a save's": ".m.zsk.mine.tmp"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"half a model")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys\n"
         f"f = open({str(tmp_path / names['running'])!r}, 'rb')\n"
         "fcntl.flock(f, fcntl.LOCK_EX)\nprint('locked', flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        zsk.save(small_model(), tmp_path / "m.zsk")
    finally:
        holder.communicate("")
    kept = {"m.zsk"} | set(names.values()) - {names["killed"]}
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    assert (tmp_path / names["running"]).read_bytes() == b"half a model"


def test_a_save_whose_new_temporary_file_is_taken_for_a_killed_saves_makes_another(tmp_path,
                                                                                    monkeypatch):
    """Between creating its temporary file and locking it, a save can lose the file to another
    process's save of the same path, which takes it for a killed save's (no lock yet) and deletes
    it: the save must notice, make a new one, and succeed."""
    pytest.importorskip("fcntl")
    mkstemp, made = zsk.tempfile.mkstemp, []

    def mkstemp_then_another_save_cleans_up(*args, **kwargs):
        fd, name = mkstemp(*args, **kwargs)
        made.append(name)
        if len(made) == 1:
            zsk._remove_stale_temporaries(str(tmp_path), ".m.zsk.")
            assert not os.path.exists(name)
        return fd, name

    monkeypatch.setattr(zsk.tempfile, "mkstemp", mkstemp_then_another_save_cleans_up)
    zsk.save(small_model(1), tmp_path / "m.zsk")
    assert len(made) == 2 and os.listdir(tmp_path) == ["m.zsk"]
    assert same_model(zeroskip.load(tmp_path / "m.zsk"), small_model(1))


def snapshot(root: Path) -> dict:
    """Every path under ``root`` (and ``root``) with its size, mtime and inode; file contents."""
    paths = [root, *root.rglob("*")] if root.exists() else []
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_ino,
                     p.read_bytes() if p.is_file() else None) for p in paths}


SAVE_INTO = r"""
import sys
import zeroskip
try:
    zeroskip.save(zeroskip.load(sys.argv[1]), sys.argv[2])
except zeroskip.SaveError as err:
    assert isinstance(err, OSError), type(err)
    print(err, end="")
"""
"""Save the model of file argv[1] to argv[2], and print the SaveError it meets."""


@pytest.mark.parametrize("case", ["missing directory",
                                  pytest.param("read-only directory", marks=POSIX_ONLY)])
def test_a_save_that_cannot_write_names_the_path_and_the_reason_and_leaves_nothing(case, tmp_path):
    """The read-only case saves from a child process which, run as root, has dropped the
    capabilities that let root write anywhere (DROP_ROOT_WRITES)."""
    folder = tmp_path / "models"
    if case == "missing directory":
        target, reason = folder / "m.zsk", f"the directory {str(folder)!r} does not exist"
        before = snapshot(tmp_path)
        with pytest.raises(zsk.SaveError) as info:
            zsk.save(small_model(1), target)
        assert isinstance(info.value, ZeroskipError) and isinstance(info.value, OSError)
        message = str(info.value)
    else:
        folder.mkdir()
        target, reason = folder / "m.zsk", f"no permission to create a file in the directory " \
                                           f"{str(folder)!r}"
        zsk.save(small_model(0), target)
        source = tmp_path / "new.zsk"
        zsk.save(small_model(1), source)
        command = [sys.executable, "-c", SAVE_INTO, str(source), str(target)]
        if IS_ROOT:
            command[1:1] = ["-c", DROP_ROOT_WRITES]
        folder.chmod(0o555)
        try:
            before = snapshot(tmp_path)
            result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        finally:
            folder.chmod(0o755)
        if IS_ROOT and result.returncode == 77:
            pytest.skip("running as root without CAP_SETPCAP: cannot drop the capabilities that "
                        "let root write into a read-only directory")
        assert result.returncode == 0, result.stderr[-3000:]
        message = result.stdout
    after = snapshot(tmp_path)
    assert message == f"cannot save the model to {str(target)!r}: {reason}"
    assert after == before  # no temporary file, the existing model untouched
    if case == "read-only directory":
        assert same_model(zeroskip.load(target), small_model(0))


# ================================================================================================
# Threads: one Session shared by four Python threads
# ================================================================================================

BATCHES = (1, 5, 12, 30)
"""Each thread's batch sizes (auto's batch classes 1, 8, 8 and 64)."""
ROUNDS = 8
"""Each thread runs its inputs this many times, in an order of its own each round (32 runs)."""


def thread_feeds(input_name: str, x: np.ndarray, threads: int = 4) -> list[list[dict]]:
    """For each thread, one feed per batch size in BATCHES; every feed holds other rows of ``x``."""
    feeds = []
    for t in range(threads):
        rows = np.roll(x, 11 * t, axis=0)
        starts = np.cumsum((0,) + BATCHES)
        feeds.append([{input_name: rows[a:a + b]} for a, b in zip(starts, BATCHES)])
    return feeds


def run_in_threads(session, feeds: list[list[dict]], rounds: int = ROUNDS) -> list[list[tuple]]:
    """Each thread runs its feeds ``rounds`` times, in a seeded order of its own each round, all
    threads started together (so that sometimes two run the same batch size, sometimes not).
    Returns per thread its (feed index, outputs) in the order run."""
    barrier = threading.Barrier(len(feeds), timeout=120)

    def work(t):
        order = random.Random(t)
        barrier.wait()
        done = []
        for _ in range(rounds):
            for i in order.sample(range(len(feeds[t])), len(feeds[t])):
                done.append((i, session.run(feeds[t][i])))
        return done

    with ThreadPoolExecutor(len(feeds)) as pool:
        return list(pool.map(work, range(len(feeds))))


def assert_same_bytes(got: dict, want: dict, context: str):
    assert list(got) == list(want), context
    for key in want:
        a, b = got[key], want[key]
        assert (a.dtype, a.shape) == (b.dtype, b.shape), f"{context} {key}: {a.dtype}{a.shape} " \
                                                         f"!= {b.dtype}{b.shape}"
        if a.tobytes() != b.tobytes():
            index = np.argwhere(a != b)
            first = tuple(int(i) for i in index[0]) if len(index) else "(NaN bits)"
            raise AssertionError(f"{context} {key}: {len(index)} values differ, first at {first}: "
                                 f"got {a[first] if len(index) else a}, want "
                                 f"{b[first] if len(index) else b}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["mlp_gemm", "residual"])
def test_four_threads_sharing_a_session_get_the_bytes_of_one_thread(name, mode):
    """The int8 MLP (Gemm, Relu, Gemm) and CNN (conv, depthwise conv, residual add, pools, Gemm),
    QDQ with uint8 activations. Reference results: each feed alone, on one thread, in a threads=1
    session. Then four threads, each with feeds of its own, run them together, ROUNDS times, on
    that session (serial kernels, work arrays per thread) and on a new threads=2 session (parallel
    kernels; in auto, the plans of the batch classes built as the batches first arrive, from
    several threads at once): every output must have the reference result's bytes."""
    _, model, input_name, x, _ = _quantized(name, "qdq", "uint8")
    feeds = thread_feeds(input_name, x)
    first = zeroskip.Session(model, mode=mode, threads=1)
    want = [[first.run(feed) for feed in mine] for mine in feeds]
    for session in (first, zeroskip.Session(model, mode=mode, threads=2)):
        for t, runs in enumerate(run_in_threads(session, feeds)):
            for r, (i, got) in enumerate(runs):
                assert_same_bytes(got, want[t][i], f"{name} {mode} threads={session.threads}: "
                                                   f"thread {t} run {r}, batch {BATCHES[i]}")


# ================================================================================================
# Read-only installs
# ================================================================================================

RUNNER = r"""
import os, sys
import numpy as np
import zeroskip

package, inputs, modes, outputs = sys.argv[1:5]
assert os.path.dirname(zeroskip.__file__) == package, zeroskip.__file__  # the copy
try:  # the precondition: this process cannot write into the package
    open(os.path.join(package, "probe"), "x").close()
except OSError:
    pass
else:
    sys.exit("the copy of the package is writable")
x = np.load(inputs)
results = {}
for mode in modes.split(","):
    session = zeroskip.Session(os.path.join(package, "data", "digits_mlp_int8.zsk"), mode=mode,
                               threads=1)
    results[mode] = session.run({"input": x})["logits"]
np.savez(outputs, **results)
import numba
print(numba.config.CACHE_DIR)
"""

DROP_ROOT_WRITES = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
    if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: lost across exec
        sys.exit(77)
os.execv(sys.executable, [sys.executable] + sys.argv[1:])
"""
"""Root is denied nothing by chmod: it has CAP_DAC_OVERRIDE. Dropped from the bounding set, that
capability (and the ones to read past permissions and to act as any file's owner) is gone from
the program exec'd next, which then meets permissions as any user does."""


def chmod_tree(root: Path, writable: bool):
    """``chmod -R a-w root`` (or ``u+w``, to undo it)."""
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | 0o200 if writable else mode & ~0o222)


def run_read_only(tmp_path: Path, modes: str, writable_home: bool):
    """Run RUNNER on a read-only copy of the package (``chmod -R a-w``; as root, in a process
    without the capabilities that ignore it), with NUMBA_CACHE_DIR unset and HOME, XDG_CACHE_HOME
    and TMPDIR in tmp_path (HOME and XDG_CACHE_HOME read-only too unless ``writable_home``). Checks
    that it exits 0, writes nothing in the read-only directories, and gives the outputs of
    dense-i8 here in every mode run. Returns the directories and the child's
    ``numba.config.CACHE_DIR``."""
    dirs = {name: tmp_path / name for name in ("site", "home", "cache", "temp", "work")}
    for path in dirs.values():
        path.mkdir()
    package = dirs["site"] / "zeroskip"
    shutil.copytree(Path(zeroskip.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    read_only = ["site"] + ([] if writable_home else ["home", "cache"])
    images = load_images((64,))[0][:7]
    np.save(dirs["work"] / "x.npy", images)
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT", "ZEROSKIP_CACHE_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(dirs["site"]), HOME=str(dirs["home"]),
               XDG_CACHE_HOME=str(dirs["cache"]), TMPDIR=str(dirs["temp"]))
    command = [sys.executable, "-c", RUNNER, str(package), str(dirs["work"] / "x.npy"), modes,
               str(dirs["work"] / "y.npz")]
    if IS_ROOT:
        command[1:1] = ["-c", DROP_ROOT_WRITES]
    for name in read_only:
        chmod_tree(dirs[name], writable=False)
    try:
        before = {name: snapshot(dirs[name]) for name in read_only}
        result = subprocess.run(command, capture_output=True, text=True, env=env,
                                cwd=dirs["work"], timeout=600)
        after = {name: snapshot(dirs[name]) for name in read_only}
    finally:
        for name in read_only:
            chmod_tree(dirs[name], writable=True)
    if IS_ROOT and result.returncode == 77:
        pytest.skip("running as root without CAP_SETPCAP: cannot drop the capabilities that let "
                    "root write into a read-only directory")
    assert result.returncode == 0, result.stderr[-3000:]
    assert after == before, "a file was written in a read-only directory"
    with np.load(dirs["work"] / "y.npz") as outputs:
        got = dict(outputs)
    want = zeroskip.Session(Path(zeroskip.__file__).parent / "data" / "digits_mlp_int8.zsk",
                            mode="dense-i8", threads=1).run({"input": images})["logits"]
    assert list(got) == modes.split(",")
    for mode, y in got.items():  # the int8 kernels compute the same integers
        assert y.tobytes() == want.tobytes(), mode
    return dirs, result.stdout.strip()


@POSIX_ONLY
def test_a_read_only_install_caches_its_kernels_in_the_user_cache_directory(tmp_path):
    """With the package directory read-only (and NUMBA_CACHE_DIR unset), Numba finds no writable
    ``__pycache__`` beside the kernels and caches them under $XDG_CACHE_HOME/numba; auto's timings
    go to $XDG_CACHE_HOME/zeroskip. zeroskip leaves Numba's choice alone (CACHE_DIR stays unset).
    A cold compile of one small model's kernels (about 7 s on 2 cores)."""
    dirs, cache_dir = run_read_only(tmp_path, "dense-i8,auto", writable_home=True)
    assert cache_dir == ""
    cache = dirs["cache"]
    for suffix in (".nbi", ".nbc"):
        files = list(cache.rglob(f"*{suffix}"))
        assert files and all(f.is_relative_to(cache / "numba") for f in files), suffix
    assert (cache / "zeroskip" / "break-even.json").is_file()
    assert not any(dirs["home"].iterdir()) and not any(dirs["temp"].iterdir())


@POSIX_ONLY
def test_with_nowhere_writable_the_kernels_cache_in_a_private_temporary_directory(tmp_path):
    """Package, HOME and XDG_CACHE_HOME all read-only: Numba has no place for its cache and would
    refuse to decorate the kernels (RuntimeError at import); zeroskip gives it a private directory
    in TMPDIR, removed at exit."""
    dirs, cache_dir = run_read_only(tmp_path, "sparse-i8", writable_home=False)
    assert cache_dir.startswith(str(dirs["temp"] / "zeroskip-numba-")), cache_dir
    assert not any(dirs["temp"].iterdir()), "the private cache outlived the process"
