"""Test sessions. ``nox -s tests`` is what CI and the README run.

- ``tests``: every distribution installed (editable) in one environment, with optional extras that
  tests exercise (``tface-backbones[onnx]``), every test.
- ``isolated``: for each plugin distribution, only ``tface-core`` + that one, and its own tests: proves
  ``pip install tface-core tface-<part>`` is a working set.
- ``lint``: ruff.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

CORE = "tface-core"
PLUGINS = ["tface-backbones", "tface-heads", "tface-augment", "tface-eval", "tface-methods", "tface-quality"]
# hatchling and setuptools: tests build small plugin packages with --no-build-isolation;
# scipy and scikit-learn: independent references (VAL@FAR interpolation, KFold, roc_curve) in tests only;
# matplotlib: the optional plots of evaluation reports; mpmath: the reference Bessel functions of the SCF tests.
TEST_DEPS = ["pytest>=7.4", "hatchling>=1.18", "setuptools>=68", "scipy>=1.10", "scikit-learn>=1.3", "matplotlib>=3.7",
             "mpmath>=1.3"]


def _editable(*dists: str) -> list[str]:
    return [arg for d in dists for arg in ("-e", d)]


@nox.session
def tests(session: nox.Session) -> None:
    """All distributions together, all tests (plus the top-level integration tests)."""
    # the optional extras too (tface-backbones[onnx], tface-core[tensorboard]), so their tests run in CI
    session.install(*TEST_DEPS, "-e", f"{CORE}[tensorboard]", *_editable(*PLUGINS[1:]), "-e", f"{PLUGINS[0]}[onnx]")
    session.run("pytest", CORE, *PLUGINS, "tests", *session.posargs)


@nox.session
@nox.parametrize("dist", PLUGINS)
def isolated(session: nox.Session, dist: str) -> None:
    """``tface-core`` + one plugin distribution only, that distribution's tests."""
    session.install(*TEST_DEPS, *_editable(CORE, dist))
    session.run("pytest", f"{dist}/tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.5")
    session.run("ruff", "check", ".")
