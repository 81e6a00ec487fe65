"""A one-line progress display on a terminal; plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}"


class Progress:
    def __init__(self, total: int, stream: TextIO | None = None, start: int = 0):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start_step = start
        self.t0 = time.perf_counter()

    def line(self, step: int, fields: dict[str, float]) -> str:
        done = step - self.start_step
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / done * (self.total - step) if done else 0.0
        parts = [f"step {step}/{self.total}"]
        for k, v in fields.items():
            parts.append(f"{k} {v:.4g}")
        parts.append(f"elapsed {_clock(elapsed)} eta {_clock(eta)}")
        return "  ".join(parts)

    def update(self, step: int, fields: dict[str, float], log: bool) -> None:
        """Redraw on a terminal every call; elsewhere print only when ``log`` is true."""
        if self.tty:
            width = 30
            filled = int(width * step / max(self.total, 1))
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] {self.line(step, fields)}\x1b[K")
            self.stream.flush()
        elif log:
            print(self.line(step, fields), file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
