"""glibc's heap kept steady (efficientdet.benchmark.heap): page faults on reused memory disappear."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from efficientdet.benchmark.heap import minor_faults, trim_heap

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A 48 MiB buffer, zero-filled (every page touched) and freed, five times: glibc's default
# policy always mmaps blocks over 32 MiB, so each pass faults its 12,288 pages in again; a
# steady heap reuses them.
_PASSES = (
    "from efficientdet.benchmark.heap import minor_faults\n"
    "def faults_per_pass():\n"
    "    bytearray(48 << 20)\n"
    "    before = minor_faults()\n"
    "    for _ in range(5):\n"
    "        bytearray(48 << 20)\n"
    "    return (minor_faults() - before) / 5\n"
)


def _python(code: str, env: dict[str, str] | None = None) -> str:
    full = {**os.environ, **(env or {})}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=full)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.skipif(not GLIBC, reason="glibc only")
def test_steady_heap_stops_page_faults() -> None:
    code = _PASSES + (
        "from efficientdet.benchmark.heap import steady_heap\n"
        "default = faults_per_pass()\n"
        "applied = steady_heap()\n"
        "print(default, applied, faults_per_pass())\n"
    )
    default, applied, steady = _python(code).split()
    assert applied == "True"
    assert float(default) > 10_000 and float(steady) < 100


def test_fault_counter_and_trim() -> None:
    faults = minor_faults()
    assert faults is None or faults > 0
    trim_heap()  # a no-op where the C library is not glibc; never raises
