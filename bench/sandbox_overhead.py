"""What the sandbox costs per program: a typical eval/math program run N times through bubblewrap (the default),
through the weaker in-process mode, and as a bare `python -I` subprocess, interleaved so machine drift hits all
alike. The model call that wrote the program takes seconds; the sandbox must stay far below that.

    .venv/bin/python bench/sandbox_overhead.py --runs 50
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date

from persona_hub_dagster.lib.evaluation import sandbox

PROGRAM = "from fractions import Fraction\nimport math\nprint(Fraction(3, 4) + Fraction(5, 6) * math.factorial(4))\n"


def bare() -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".py") as handle:
        handle.write(PROGRAM)
        handle.flush()
        started = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-B", handle.name], capture_output=True, check=True)
        return time.perf_counter() - started


def sandboxed(mode: str) -> float:
    os.environ[sandbox.SANDBOX_ENV] = mode
    result = sandbox.run_python(PROGRAM)
    assert result.ok, result.stderr
    return result.seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    passes = {
        "bare python subprocess": bare,
        "weak (in-process hook)": lambda: sandboxed("weak"),
        "bubblewrap (default)": lambda: sandboxed("bwrap"),
    }
    for run in passes.values():  # warm up: bwrap's probe, the page cache
        run()
    times: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(args.runs):
        for name, run in passes.items():
            times[name].append(run())
    print(f"## Sandbox overhead, {date.today()}, {platform.node()} ({platform.machine()}): {args.runs} runs each")
    print("| pass | median ms | p90 ms | vs bare |")
    print("|---|---:|---:|---:|")
    base = statistics.median(times["bare python subprocess"])
    for name, values in times.items():
        values.sort()
        median, p90 = statistics.median(values), values[int(0.9 * (len(values) - 1))]
        print(f"| {name} | {median * 1000:.1f} | {p90 * 1000:.1f} | {median / base:.2f}× |")


if __name__ == "__main__":
    main()
