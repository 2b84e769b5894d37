#!/usr/bin/env python3
"""What the number of environments a config declares costs a `bulkhead serve`, one function
per measurement, printed as one table per build (and the raw figures as JSON lines on
stderr). For each size (default 10, 1000 and 10000 environments, each with its own SQLite
database under the data directory):

  start          seconds from starting the process to "bulkhead listening on";
  served         environments that answer a GET (the others are refused as unavailable);
  idle RSS       VmRSS, in MB, IDLE seconds (default 3) after it listens;
  open files     entries of /proc/PID/fd then;
  threads        Threads: of /proc/PID/status then;
  cold ms        the median time of the first GET of a state in environments no request
                 has named yet (COLD of them, default 20, each on a connection of its own);
  hot GET/s      GET of one small state, from wrk on 2 connections for SECONDS (default 5)
                 (skipped with a note when wrk is missing: apt-get install wrk).

    bench/environments.py [--sizes 10,1000,10000] [--cold 20] [--seconds 5] [--idle 3]
                          [--open-files 20000] [--kind declared|personal]

With --kind personal the environments are those of one `personal` template with SIZE
members (sandbox-u00000, ...), which the bench user may write too.

BULKHEAD_BIN is the binary measured (default target/release/bulkhead, built if missing);
BASELINE_BIN, when set, is measured too, at every size, and the table gives each figure's
ratio to it (e.g. a build of an earlier commit: `git worktree add /tmp/base HEAD~3 && cargo
build --release --manifest-path /tmp/base/Cargo.toml`). Every server runs under an
open-file limit of --open-files (soft and hard; at most what this process may grant). Only
loopback is used; every server it starts is stopped and its directory removed. Linux only.
"""

import argparse
import base64
import http.client
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time

import resources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GET_SCRIPT = os.path.join(ROOT, "bench", "wrk", "get.lua")
STATE = (
    '{"version":4,"terraform_version":"1.11.4","serial":1,"lineage":"bench-hot",'
    '"outputs":{},"resources":[],"check_results":null}\n'
)


def env_name(kind, i):
    """The I-th environment of a config of KIND."""
    return f"e{i:05}" if kind == "declared" else f"sandbox-u{i:05}"


def config_text(size, kind="declared"):
    """SIZE environment blocks, or (KIND personal) one template for SIZE members that the
    user `bench` may also write."""
    if kind == "personal":
        members = ", ".join(f'"u{i:05}"' for i in range(size))
        return (
            'server {\n  data_dir = "data"\n}\n'
            'team "app" { members = ["bench"] }\n'
            f'team "developers" {{ members = [{members}] }}\n'
            'personal "sandbox" {\n  members = ["team:developers"]\n'
            '  write   = ["user:bench"]\n}\n'
        )
    lines = [
        'server {\n  data_dir = "data"\n}\n',
        'team "app" { members = ["bench"] }\n',
    ]
    for i in range(size):
        lines.append(
            f'environment "e{i:05}" {{\n  owner = "team:app"\n  read  = ["team:app"]\n'
            f'  write = ["team:app"]\n}}\n'
        )
    return "".join(lines)


class Server(resources.Server):
    """A `bulkhead serve` of SIZE environments (see `resources.Server`), with Basic
    credentials for the user `bench` and requests on connections of their own."""

    def __init__(self, binary, size, open_files, kind):
        super().__init__(binary, open_files=open_files, config_text=config_text(size, kind),
                         start_timeout=600)
        self.kind = kind
        self.host, port = self.base.removeprefix("http://").rsplit(":", 1)
        self.basic = base64.b64encode(f"bench:{self.token}".encode()).decode()

    def request(self, method, path, body=None):
        """(status, seconds) of one request on a connection of its own."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        started = time.monotonic()
        conn.request(method, path, body=body, headers={"Authorization": "Basic " + self.basic})
        status = conn.getresponse().status
        seconds = time.monotonic() - started
        conn.close()
        return status, seconds


def served(server, size):
    """How many of a sample of environments answer a GET (all of them where size <= 200)."""
    sample = range(size) if size <= 200 else range(0, size, max(1, size // 200))
    answered = sum(
        server.request("GET", f"/v1/state/{env_name(server.kind, i)}/probe")[0] in (200, 204, 404) for i in sample
    )
    return round(answered * size / len(sample))


def cold(server, size, count):
    """Median milliseconds of the first GET to environments not named yet (the last ones)."""
    times = []
    for i in range(max(0, size - count), size):
        status, seconds = server.request("GET", f"/v1/state/{env_name(server.kind, i)}/cold")
        if status in (200, 204, 404):
            times.append(seconds * 1000)
    return round(statistics.median(times), 2) if times else None


def hot(server, seconds, note):
    """GET/s of one small state in the first environment, from wrk."""
    wrk = shutil.which("wrk")
    if wrk is None:
        note("hot GET/s: SKIPPED: wrk not found (apt-get install wrk)")
        return None
    path = f"/v1/state/{env_name(server.kind, 0)}/hot"
    status, _ = server.request("POST", path, STATE.encode())
    if status != 200:
        note(f"hot GET/s: the POST of the state answered {status}")
        return None
    out = subprocess.run(
        [wrk, "-t1", "-c2", f"-d{seconds}s", "-s", GET_SCRIPT,
         f"{server.base}{path}"],
        env={**os.environ, "BENCH_BASIC": server.basic},
        capture_output=True,
        text=True,
    ).stdout
    found = re.search(r"RESULT rps=([0-9.]+) .* non2xx=(\d+) errors=(\d+)", out)
    if not found:
        note(f"hot GET/s: wrk printed no RESULT: {out.strip()[:200]}")
        return None
    if int(found.group(2)) or int(found.group(3)):
        note(f"hot GET/s: {found.group(2)} answers were not 2xx, {found.group(3)} errors")
    return round(float(found.group(1)))


def measure(binary, size, args, note):
    server = Server(binary, size, args.open_files, args.kind)
    try:
        figures = {"start s": round(server.start_seconds, 3)}
        time.sleep(args.idle)
        figures["idle RSS MB"] = server.status("VmRSS")
        figures["open files"] = server.open_files()
        figures["threads"] = server.figure("Threads")
        figures["cold ms"] = cold(server, size, min(args.cold, size))
        figures["served"] = served(server, size)
        figures["hot GET/s"] = hot(server, args.seconds, note)
        return figures
    finally:
        server.stop()


COLUMNS = ["start s", "served", "idle RSS MB", "open files", "threads", "cold ms", "hot GET/s"]


def table(results, builds, sizes):
    rows = ["  {:<10} {:>8}".format("build", "envs") + "".join(f" {c:>18}" for c in COLUMNS)]
    for build in builds:
        for size in sizes:
            figures = results[(build, size)]
            cells = []
            for column in COLUMNS:
                value = figures.get(column)
                text = "-" if value is None else str(value)
                base = results.get(("baseline", size), {}).get(column)
                if build != "baseline" and "baseline" in builds and value and base:
                    text += f" ({value / base:.2f}x)"
                cells.append(f" {text:>18}")
            rows.append(f"  {build:<10} {size:>8}" + "".join(cells))
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--cold", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--idle", type=float, default=3)
    parser.add_argument("--open-files", type=int, default=20000)
    parser.add_argument("--kind", choices=["declared", "personal"], default="declared")
    args = parser.parse_args()
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        sys.exit(f"--sizes {args.sizes}: whole numbers separated by commas are wanted")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and args.open_files > hard:
        sys.exit(f"--open-files {args.open_files}: this shell may grant at most {hard}")
    binary = os.environ.get("BULKHEAD_BIN", os.path.join(ROOT, "target/release/bulkhead"))
    if not os.path.exists(binary):
        subprocess.run(["cargo", "build", "--release", "--bin", "bulkhead"], cwd=ROOT, check=True)
    builds = [("this", binary)]
    if os.environ.get("BASELINE_BIN"):
        builds.insert(0, ("baseline", os.environ["BASELINE_BIN"]))
    notes, results = [], {}

    for build, path in builds:
        for size in sizes:
            def note(text, build=build, size=size):
                notes.append(f"{build}, {size} environments: {text}")

            figures = measure(path, size, args, note)
            results[(build, size)] = figures
            print(json.dumps({"build": build, "binary": path, "environments": size, **figures}),
                  file=sys.stderr, flush=True)
    print(f"{args.kind} environments: open-file limit {args.open_files}, {args.cold} cold GETs, "
          f"wrk -c2 for {args.seconds} s, idle figures {args.idle} s after listening")
    print(table(results, [b for b, _ in builds], sizes))
    for text in notes:
        print(f"  note: {text}")


if __name__ == "__main__":
    main()
