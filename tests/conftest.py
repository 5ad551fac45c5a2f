"""Test-suite wiring.

Triton kernels are decorated in interpreter mode (TRITON_INTERPRET must be set before the
kernels are imported), but every test runs on the plain-PyTorch reference path by default.
Tests under tests/kernels/ switch the interpreter on (see tests/kernels/conftest.py), as does
any test that asks for the ``interpret`` fixture.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import pkgutil  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import tritium.kernels  # noqa: E402

# Decorate every kernel now, while TRITON_INTERPRET=1: a kernel module first imported inside a
# reference-path test (TRITON_INTERPRET=0) would be compiled for a GPU and fail under the
# interpreter later in the session.
for _mod in pkgutil.iter_modules(tritium.kernels.__path__):
    importlib.import_module(f"tritium.kernels.{_mod.name}")

torch.set_num_threads(max(1, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _reference_path(monkeypatch):
    """Default: CPU ops take the reference path."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.fixture
def interpret(monkeypatch):
    """Run CPU ops through the Triton kernels under the interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
