"""The router's processes keep freed memory for the next instance (:func:`router.engine.reuse_freed_memory`).

Measured by the pages the kernel faults in (a count, not a time), in a fresh interpreter each
time so that the test runner's own allocator settings play no part.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator settings")

CHURN = """
import resource, sys
from router import engine
tuned = engine.reuse_freed_memory() if sys.argv[1] == "tuned" else None

def instance():
    # what transcoding one CT frame allocates at once: the compressed frame, the decoded one, a file buffer
    held = [bytearray(490_000), bytearray(524_288), bytearray(65_536)]
    del held

instance()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    instance()
print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 50)
"""


def faults_per_instance(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True, timeout=60)
    tuned, faults = out.stdout.split()
    return tuned, int(faults)


def test_freed_buffers_are_reused_instead_of_faulted_in_again():
    tuned, faults = faults_per_instance("tuned")
    assert tuned == "True"
    assert faults < 10  # the same heap pages each time


def test_without_it_every_instance_faults_its_buffers_in_again():
    """The case the setting is for: glibc's defaults hand these blocks back to the kernel each time."""
    tuned, faults = faults_per_instance("default")
    assert tuned == "None"
    assert faults > 100  # a few hundred pages of 4 KiB
