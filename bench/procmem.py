"""Memory of this process for the benches: resident set and its peak from /proc (Linux), and a peak reset."""

from __future__ import annotations

from pathlib import Path

__all__ = ["reset_peak", "status_bytes"]


def status_bytes(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process from /proc/self/status, in bytes (None without /proc)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def reset_peak() -> bool:
    """Reset the peak resident set (VmHWM) to the current one; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
