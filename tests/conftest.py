"""Shared test set-up: Hypothesis profiles ("dev" by default, "ci" bounded; pick with HYPOTHESIS_PROFILE)."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("dev", max_examples=60, deadline=None)
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# mode="auto" measures break-even densities once per machine and caches them; the tests measure
# into a fresh directory of their own rather than reading or writing the user's cache. One per
# process: pytest-xdist's workers inherit the environment of the process that started them, and
# workers sharing one cache lost each other's timings (two processes rewriting one file), so that a
# process that read it back (tests/test_nojit.py's child) found a layer untimed and chose otherwise.
# A directory the user set before the tests started is kept.
_OWNER = "ZEROSKIP_TEST_CACHE_OWNER"
if "ZEROSKIP_CACHE_DIR" not in os.environ or os.environ.get(_OWNER, str(os.getpid())) != str(
        os.getpid()):
    import tempfile

    os.environ["ZEROSKIP_CACHE_DIR"] = tempfile.mkdtemp(prefix="zeroskip-test-cache-")
    os.environ[_OWNER] = str(os.getpid())
