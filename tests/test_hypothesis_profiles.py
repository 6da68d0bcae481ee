"""The Hypothesis profile of tests/conftest.py ("dev", or "ci" with HYPOTHESIS_PROFILE=ci) governs
every property test: no test module pins its own example count or deadline.

A test that must run fewer examples than the profile (because each one is slow) says so relative to
it, e.g. ``settings(max_examples=max(5, settings.default.max_examples // 2))``; that is evaluated when
the module is imported, which is after conftest.py has loaded the profile (checked below).
"""

from __future__ import annotations

import os
import pathlib
import re

from hypothesis import settings

TESTS = pathlib.Path(__file__).parent
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
EXAMPLES_AT_IMPORT = settings.default.max_examples
"""The example count in force while this module was being imported."""

ASSIGNMENT = re.compile(r"\b(max_examples|deadline)\s*=\s*(?P<value>[^,)\n]*)")


def pinned_settings() -> list[str]:
    """``file:line: text`` for every example count or deadline set outside conftest.py, except an
    example count computed from ``settings.default``."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name == "conftest.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in ASSIGNMENT.finditer(line):
                relative = match.group(1) == "max_examples" and "settings.default" in line
                if not relative:
                    found.append(f"{path.relative_to(TESTS)}:{number}: {line.strip()}")
    return found


def test_no_test_module_pins_example_counts_or_deadlines():
    found = pinned_settings()
    assert not found, ("the profiles in conftest.py set max_examples and deadline; express a smaller "
                       "count relative to settings.default instead:\n" + "\n".join(found))


def test_the_check_sees_a_pinned_count():
    line = "@settings(deadline" + "=None, max_examples" + "=40)"  # split: the scan reads this file
    assert [m.group(1) for m in ASSIGNMENT.finditer(line)] == ["deadline", "max_examples"]


def test_the_profile_named_by_the_environment_was_loaded_before_test_modules_import():
    profile = settings.get_profile(PROFILE)
    assert EXAMPLES_AT_IMPORT == profile.max_examples == settings.default.max_examples
    assert settings.default.deadline is None
    if PROFILE == "ci":
        assert settings.default.derandomize
