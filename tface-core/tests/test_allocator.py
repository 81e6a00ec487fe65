"""keep_freed_memory: freed large blocks stay in the process (no page faults on reuse); opt-out and no-ops."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tface.core import allocator

# A child process allocates, fills and frees a 64 MiB tensor (above glibc's largest mmap threshold) over and
# over, and counts the minor page faults of the last five rounds. The first rounds grow the heap: the
# small objects allocated beside each block split the freed one, until enough free space is around.
CHILD = r"""
import json, resource, sys
import torch
from tface.core.allocator import keep_freed_memory
applied = keep_freed_memory()
def round_():
    t = torch.empty(16 * 1024 * 1024, dtype=torch.float32)
    t.fill_(1.0)
    del t
for _ in range(10):
    round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    round_()
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""

PAGES = 64 * 1024 * 1024 // os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 16384


def _child(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != allocator.ENV}
    if env_value is not None:
        env[allocator.ENV] = env_value
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


glibc_linux = pytest.mark.skipif(not sys.platform.startswith("linux") or not os.confstr("CS_GNU_LIBC_VERSION"),
                                 reason="the setting exists on Linux with glibc only")


@glibc_linux
def test_freed_memory_is_reused_without_page_faults():
    kept = _child(None)
    assert kept["applied"] is True
    # the blocks come from the heap the earlier ones left: (almost) no page is faulted in again
    assert kept["faults"] < PAGES // 10


@glibc_linux
def test_system_setting_leaves_glibc_alone():
    system = _child("system")
    assert system["applied"] is False
    # glibc's default: every block is mmapped afresh and each of its pages faulted in (and zeroed) again
    assert system["faults"] > 5 * PAGES // 2


def test_opt_out_in_this_process(monkeypatch):
    monkeypatch.setenv(allocator.ENV, "System")
    assert allocator.keep_freed_memory() is False


def test_no_op_off_linux(monkeypatch):
    monkeypatch.delenv(allocator.ENV, raising=False)
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False
