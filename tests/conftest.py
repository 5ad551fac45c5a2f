"""Test-suite wiring.

Triton kernels are decorated in interpreter mode (TRITON_INTERPRET must be set before the
kernels are imported), but every test runs on the plain-PyTorch reference path by default.
Tests under tests/kernels/ switch the interpreter on (see tests/kernels/conftest.py), as does
any test that asks for the ``interpret`` fixture.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _reference_path(monkeypatch):
    """Default: CPU ops take the reference path."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.fixture
def interpret(monkeypatch):
    """Run CPU ops through the Triton kernels under the interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
