"""Numba kernels, one module per (op, weight format), f32 and i8 variants side by side.

Each module defines ``KERNELS = {name: jitted function}`` with names ``<op>_<format>_<dtype>``;
``KERNELS`` here is their union. ``zeroskip.reference.REFERENCES`` has a reference under every key.
Kernels write into caller-allocated outputs and return nothing; they trust their inputs, which the
planner (``zeroskip.engine``) has validated, because Numba does not check bounds.
"""

from __future__ import annotations

import gc
import importlib
import os
import pkgutil
import sys


_TBB_LIBRARY = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib", "win32": "tbb12.dll"}
_TBB_MIN_INTERFACE = 12060  # Numba's own floor: TBB 2021.6


def _load_tbb() -> bool:
    """Load TBB's runtime library (from the loader's path, else from the ``tbb`` distribution's
    files) and Numba's TBB pool; whether both loaded and TBB is recent enough for Numba."""
    import ctypes

    name = _TBB_LIBRARY.get(sys.platform)
    if name is None:
        return False
    try:
        library = ctypes.CDLL(name)
    except OSError:
        try:
            from importlib import metadata

            files = [f for f in metadata.distribution("tbb").files or () if f.name == name]
            # RTLD_GLOBAL: Numba's pool then finds the loaded library by its soname
            library = ctypes.CDLL(str(files[0].locate()), mode=ctypes.RTLD_GLOBAL)
        except (metadata.PackageNotFoundError, IndexError, OSError):
            return False
    try:
        version = library.TBB_runtime_interface_version
        version.restype = ctypes.c_int
        if version() < _TBB_MIN_INTERFACE:
            return False
        from numba.np.ufunc import tbbpool  # noqa: F401 - fails if Numba was built without TBB
    except (AttributeError, ImportError, OSError):
        return False
    return True


def _prepare_numba() -> None:
    """Import Numba and ready it for the cached kernels, once, as cheaply as it allows.

    * **Threading layer** (docs/kernels.md, "Threads"): Intel TBB when its library loads, else
      workqueue. At batch 1 a model's layers take 0.05–2 ms each, so a second thread only pays if
      it starts work within microseconds of each parallel call: TBB's workers spin briefly, then
      sleep, and a call costs ~5 µs (workqueue ~50 µs, and its sleeping workers wake late). TBB
      also yields to other processes, where OpenMP with spinning workers collapsed (10× slower
      runs when another job took a core) and stalled behind OpenBLAS's spinning threads. The
      ``tbb`` wheel puts its library in the environment's ``lib/``, which the loader does not
      search, so it is loaded here by path (``_load_tbb``). A user's NUMBA_THREADING_LAYER wins;
      the choice only matters before the process's first parallel call.
    * **Start-up** (measured on the 2-vCPU machine, warm cache): the first call of any cached
      kernel makes Numba load all its implementation registries (0.35–0.4 s). 0.15–0.19 s of that
      is its probe for SciPy's BLAS (``import scipy.linalg.cython_blas``), which only np.convolve /
      np.correlate in jitted code would use (np.dot and np.linalg probe again when typed); no kernel
      here uses either, so the probe is skipped unless scipy.linalg is loaded already. The garbage
      collector is off meanwhile (the registries are ~1M long-lived objects: 40–70 ms of passes).
      If Numba's internals differ, the registries load on the first call as usual.
    """
    requested = os.environ.get("NUMBA_THREADING_LAYER", "").lower()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # if OpenMP is used after all
    collecting = gc.isenabled()
    gc.disable()
    try:
        import numba
        from numba.core.registry import cpu_target

        numba.config.reload_config()
        tbb = requested in ("", "default", "tbb") and _load_tbb()
        if not requested:
            # Numba's config, not the environment, so that child processes are not told to use a
            # library they may not find. Numba resets it only if a NUMBA_* variable changes, and
            # then picks TBB first anyway.
            numba.config.THREADING_LAYER = "tbb" if tbb else "workqueue"
        hide = "scipy.linalg" not in sys.modules and "scipy.linalg.cython_blas" not in sys.modules
        if hide:
            sys.modules["scipy.linalg.cython_blas"] = None  # the import fails at once
        try:
            cpu_target.target_context.refresh()
            cpu_target.typing_context.refresh()
        finally:
            if hide:
                del sys.modules["scipy.linalg.cython_blas"]
    except Exception:  # noqa: BLE001 - an optimization only: the first call does the same work
        pass
    finally:
        if collecting:
            gc.enable()


_prepare_numba()


def _ensure_cache_location() -> None:
    """Give Numba's disk cache a place to go when it has none, before any kernel is decorated.

    Numba picks the cache of a ``cache=True`` function when it is decorated, from its locators in
    order: ``$NUMBA_CACHE_DIR``; the ``__pycache__`` beside the source file, if writable; the
    user-wide cache (``$XDG_CACHE_HOME/numba``, else ``~/.cache/numba``), if writable. So an install
    whose package directory is read-only needs nothing from us: the kernels cache under the user's
    cache directory (tests/test_reliability.py checks it). But when none of them is writable (a
    read-only package *and* a read-only or missing home, as in a container with a read-only root
    file system), Numba raises RuntimeError("cannot cache function ...: no locator available") at
    the first kernel's decoration, and every Numba mode fails. Then the kernels cache in a private
    temporary directory (0700, so no other user can plant compiled code there), removed at exit:
    each process compiles its kernels again, but it runs. Set in Numba's config, not the
    environment, so that child processes look for a lasting cache of their own.
    """
    try:
        import numba
        from numba.core import caching

        if numba.config.CACHE_DIR or getattr(numba.config, "CACHE_LOCATOR_CLASSES", None):
            return  # the user's choice
        impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl")
        # the locators probe exactly what a kernel here will get: this file's directory
        if any(locator.from_function(_ensure_cache_location, __file__) is not None
               for locator in impl._locator_classes):
            return
    except Exception:  # noqa: BLE001 - Numba's internals differ: leave the choice to Numba
        return
    import atexit
    import shutil
    import tempfile

    try:
        directory = tempfile.mkdtemp(prefix="zeroskip-numba-")
    except OSError:
        return  # nowhere to write at all: Numba's own error will say so
    numba.config.CACHE_DIR = directory
    atexit.register(shutil.rmtree, directory, True)


_ensure_cache_location()


def _start_team() -> None:
    """Parallel regions on the team of kernels/_team.py (on Linux x86-64, unless ZEROSKIP_TEAM=0):
    before any parallel kernel is linked. If it cannot start, Numba's threading layer runs them."""
    from . import _team

    try:
        _team.install()
    except Exception as error:  # noqa: BLE001 - an optimization only
        import warnings

        warnings.warn(f"zeroskip: parallel regions stay on Numba's threading layer ({error})",
                      RuntimeWarning, stacklevel=2)


_start_team()


_SERIAL: dict = {}


def serial_kernel(name: str):
    """The kernel ``name`` compiled without ``parallel=True`` (its prange loops run as plain loops),
    for one-thread sessions: a parallel kernel goes through the threading layer even on one thread,
    which costs ~5 µs per call under TBB and ~50 µs under workqueue (twice the whole run of the
    demo's MLP). Same loops, same results; compiled (and cached on disk under its own name) on first
    use. Under NUMBA_DISABLE_JIT=1 a kernel is its plain Python function (prange is range), which
    already is serial: it is its own twin."""
    twin = _SERIAL.get(name)
    if twin is None:
        import numba

        from ._copies import renamed_copy

        dispatcher = KERNELS[name]
        if numba.config.DISABLE_JIT or not hasattr(dispatcher, "py_func"):
            _SERIAL[name] = dispatcher
            return dispatcher
        options = {k: v for k, v in dispatcher.targetoptions.items()
                   if k not in ("parallel", "nopython")}  # njit implies nopython
        twin = _SERIAL[name] = numba.njit(cache=True, **options)(
            renamed_copy(dispatcher.py_func, "_serial"))
    return twin


def serial_launches() -> bool:
    """Whether parallel kernels must not be launched from two Python threads at once (workqueue's
    rule; TBB and OpenMP take concurrent launches)."""
    import numba

    return numba.config.THREADING_LAYER == "workqueue"


KERNELS: dict = {}
"""Kernel name -> jitted kernel."""


def _collect() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        for name, kernel in getattr(module, "KERNELS", {}).items():
            if name in KERNELS:
                raise RuntimeError(f"kernel {name!r} is defined twice")
            KERNELS[name] = kernel


_collect()

__all__ = ["KERNELS", "serial_kernel", "serial_launches"]
