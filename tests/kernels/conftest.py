import pytest


@pytest.fixture(autouse=True)
def _interpret_kernels(monkeypatch):
    """Every test in tests/kernels/ runs the Triton kernels under the interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
