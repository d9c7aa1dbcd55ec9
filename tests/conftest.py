"""Shared fixtures: a small phantom data set generated once per session."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from avn_node.phantom.generate import PhantomOptions, generate

ALL_SYNTAXES = {"explicit": 1.0, "j2k": 1.0, "jpegls": 1.0, "jpeg-lossless": 1.0, "rle": 1.0}
PHANTOM_SET_OPTIONS = PhantomOptions(studies=12, seed=12, syntax_mix=ALL_SYNTAXES, size_range=(600, 800))


def require_tool(name: str) -> str:
    """Path of a real peer tool; the Makefile installs them, so a missing one fails the test run."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run the tests through `make test`, which installs it")
    return path


@pytest.fixture(scope="session")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 patients at reduced detector size, every transfer syntax represented."""
    out = tmp_path_factory.mktemp("phantom")
    generate(PHANTOM_SET_OPTIONS, out, workers=2)
    return out
