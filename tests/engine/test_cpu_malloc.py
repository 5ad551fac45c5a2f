import platform

import pytest

from tritium.engine import cpu_malloc


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_is_accepted_once(monkeypatch):
    monkeypatch.setattr(cpu_malloc, "_applied", None)
    assert cpu_malloc.keep_freed_memory() is True
    monkeypatch.setattr(cpu_malloc.ctypes, "CDLL", None)  # a second call must not reload libc
    assert cpu_malloc.keep_freed_memory() is True


def test_keep_freed_memory_without_libc(monkeypatch):
    monkeypatch.setattr(cpu_malloc, "_applied", None)

    def no_libc(name):
        raise OSError("no libc here")

    monkeypatch.setattr(cpu_malloc.ctypes, "CDLL", no_libc)
    assert cpu_malloc.keep_freed_memory() is False
