"""Profile secretcache's cache-hit path: start moto and secretcache (pinned
to CPU 0), pre-warm one secret, load it with wrk (CPU 1) and sample the
server with py-spy meanwhile; print the top functions by own and by
cumulative time, and keep the raw stacks and a flame graph.

    pip install py-spy && python bench/profile_hit.py [--seconds 15] [--connections 16]

Writes /tmp/hit.txt (py-spy's collapsed stacks), /tmp/hit.svg (flame graph)
and /tmp/hit.speedscope.json (open at https://www.speedscope.app). Needs wrk.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import threading
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run


def function_of(frame: str) -> str:
    # "render (twisted/web/resource.py)" -> "render (resource.py)"
    match = re.match(r"(.*) \((.*)\)$", frame)
    if not match:
        return frame
    name, path = match.groups()
    parts = path.split("/")
    short = (
        "/".join(parts[-2:])
        if parts[-2:-1] in (["klein"], ["secretcache"])
        else parts[-1]
    )
    return f"{name} ({short})"


def summarise(path: str, top: int) -> None:
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            frames = [function_of(x) for x in stack.split(";")]
            # The reactor thread only: the thread pool's workers wait on a
            # condition, which py-spy does not always count as idle.
            if not any(x.startswith("ReactorBase.mainLoop ") for x in frames):
                continue
            total += count
            own[frames[-1]] += count
            for name in set(frames):
                cumulative[name] += count
    print(f"{total} samples of the reactor thread's busy time\n")
    # Frames on (nearly) every stack, from runpy down to the reactor's
    # dispatch, say nothing about the hit path: leave them out.
    trunk = {name for name, count in cumulative.items() if count >= 0.95 * total}
    for title, counter in (("own time", own), ("cumulative time", cumulative)):
        print(f"top {top} by {title}:")
        entries = [
            (n, c) for n, c in counter.most_common() if n not in trunk or counter is own
        ]
        for name, count in entries[:top]:
            print(f"  {100 * count / total:5.1f}%  {name}")
        print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples/s")
    args = parser.parse_args()
    pyspy = shutil.which("py-spy") or os.path.join(
        os.path.dirname(sys.executable), "py-spy"
    )
    if not os.path.exists(pyspy) or not shutil.which("wrk"):
        raise SystemExit("needs py-spy (pip install py-spy) and wrk")
    bench = run.Bench(run.QUICK, "wrk")
    try:
        bench.create_secrets([run.HIT_ID])
        server = bench.proxied
        run.warm_hit(server.port)
        bench.load(server.port, run.HIT_PATH, args.connections, 2)
        # The raw stacks (summarised below) get most of the time.
        outputs = {
            "raw": ("/tmp/hit.txt", args.seconds),
            "flamegraph": ("/tmp/hit.svg", 5),
            "speedscope": ("/tmp/hit.speedscope.json", 5),
        }
        result: dict[str, object] = {}

        def load() -> None:
            result.update(
                bench.load(
                    server.port, run.HIT_PATH, args.connections, args.seconds + 14
                )
            )

        loader = threading.Thread(target=load)
        loader.start()
        pid = str(server.process.pid)
        for fmt, (path, seconds) in outputs.items():
            subprocess.run(
                [
                    *run.pinned(run.LOAD_CPU),
                    pyspy,
                    "record",
                    "--pid",
                    pid,
                    "--rate",
                    str(args.rate),
                    "--duration",
                    str(seconds),
                    "--nolineno",
                    "--format",
                    fmt,
                    "--output",
                    path,
                ],
                check=True,
                capture_output=True,
            )
        loader.join()
        print(
            f"under py-spy (it stops the server {args.rate} times a second): "
            f"{result['rps']:,.0f} requests/s, p50 {result['p50']:.2f} ms, "
            f"p99 {result['p99']:.2f} ms ({args.connections} connections)\n"
        )
        summarise(outputs["raw"][0], args.top)
        print("stacks: " + ", ".join(path for path, _ in outputs.values()))
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
