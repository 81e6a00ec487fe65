"""Start-up time of the ``tface`` CLI against bare Python and ``import torch``, measured in the same run.

Each command runs in a fresh subprocess; the best of N wall times counts (a warm OS cache, as a user's
second call). ``tface list`` is timed with its remembered import checks in place (one untimed run fills
a temporary store first); ``tface list --check`` imports every component, which needs torch.

    python bench/cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

from data_read import best_rate  # this folder's shared timing helper (run as a script)

TFACE = [sys.executable, "-m", "tface.core.cli"]
COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "tface --help": [*TFACE, "--help"],
    "tface data --help": [*TFACE, "data", "--help"],
    "tface list --no-check": [*TFACE, "list", "--no-check"],
    "tface list": [*TFACE, "list"],
    "tface list --check": [*TFACE, "list", "--check"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TFACE_CACHE": cache}

        def run(cmd: list[str]) -> None:
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        run(COMMANDS["tface list"])  # fills the store of remembered checks (and warms the OS cache)
        seconds = {label: 1 / best_rate(lambda cmd=cmd: run(cmd), 1, args.repeats) for label, cmd in COMMANDS.items()}
    bare, torch_s = seconds["python -c pass"], seconds["python -c 'import torch'"]
    print(f"best of {args.repeats}, {os.cpu_count()} CPUs")
    print(f"{'command':28} {'seconds':>8} {'x python':>9} {'x torch':>8}")
    for label, s in seconds.items():
        print(f"{label:28} {s:8.3f} {s / bare:9.1f} {s / torch_s:8.2f}")


if __name__ == "__main__":
    main()
