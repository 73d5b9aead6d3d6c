"""A pytest plugin for running Chroma's shipped tests (chromadb/test) from scripts/chroma-suite.sh.

Loaded with `-p chroma_suite_plugin` (this directory on PYTHONPATH). It makes a run repeatable
and bounded:

- a Hypothesis profile `chroma_shift` (the same health checks as Chroma's own `base` profile, no
  example database, so an earlier failure is never replayed into a later run) is loaded after
  Chroma's conftest has loaded its own;
- with CHROMA_SUITE_MAX_EXAMPLES=N, every Hypothesis test runs at most N examples and every
  state machine at most N steps, whatever its own decorator says (Chroma's tests pin their
  counts per preset, from 1 to 100);
- the seed is the one given with `--hypothesis-seed` (the script always passes one and prints
  it); it is printed again in the report header.
"""

import os

import hypothesis
import pytest


def _max_examples():
    value = os.environ.get("CHROMA_SUITE_MAX_EXAMPLES", "").strip()
    return int(value) if value else None


def _profile():
    cap = _max_examples()
    extra = {}
    if cap is not None:
        extra = {"max_examples": cap, "stateful_step_count": max(cap, 2)}
    return hypothesis.settings(
        deadline=None,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        print_blob=True,
        **extra,
    )


def pytest_configure(config):
    # Chroma's conftest (imported before this hook runs) loads its own preset; ours wins.
    hypothesis.settings.register_profile("chroma_shift", _profile())
    hypothesis.settings.load_profile("chroma_shift")


def pytest_report_header(config):
    seed = config.getoption("hypothesis_seed", default=None)
    cap = _max_examples()
    return f"chroma-suite: hypothesis seed {seed}, max examples {cap if cap else 'as each test sets'}"


def pytest_collection_modifyitems(session, config, items):
    """Caps the examples of tests whose decorator pinned a larger count."""
    cap = _max_examples()
    if cap is None:
        return
    for item in items:
        function = getattr(item, "obj", None)
        own = getattr(function, "_hypothesis_internal_use_settings", None)
        if own is None:
            continue
        if own.max_examples > cap or own.stateful_step_count > max(cap, 2):
            function._hypothesis_internal_use_settings = hypothesis.settings(
                own,
                max_examples=min(own.max_examples, cap),
                stateful_step_count=min(own.stateful_step_count, max(cap, 2)),
                database=None,
                deadline=None,
            )


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    hypothesis.settings.load_profile("chroma_shift")
