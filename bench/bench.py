#!/usr/bin/env python3
"""bulkhead's benchmark, run by bench/run.sh (whose header says what it measures and how to
run it): reads the settings, finds or installs the programs they need, builds what must be
built before anything is measured, runs the three benchmarks of bench/suite/ (apply.py,
throughput.py, policy.py: one module each, every measurement appended to RESULTS/raw.jsonl
as it is taken) and prints one table, also kept as RESULTS/table.txt."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time

from suite import apply, needs, policy, throughput
from suite.common import ROOT, RULE, SKIP_WORDS, Fatal, Run, Settings, log

USAGE = "usage: bench/run.sh [TF_RUNS] [LOAD_RUNS] [SECONDS] (whole numbers > 0)"


def whole(text, name=None):
    """TEXT as a whole number > 0; NAME is the environment variable it came from."""
    if not re.fullmatch(r"[1-9][0-9]*", text):
        raise Fatal(f"{name}={text}: whole numbers > 0 are wanted" if name else USAGE, status=2)
    return int(text)


def settings(argv):
    if len(argv) > 3:
        raise Fatal(USAGE, status=2)
    tf_runs, load_runs, duration = (whole(a) for a in argv + ["10", "3", "5"][len(argv) :])
    env = os.environ.get
    skip = set(env("BENCH_SKIP", "").split())
    unknown = skip - set(SKIP_WORDS)
    if unknown:
        raise Fatal(
            f"BENCH_SKIP: unknown {' '.join(sorted(unknown))} (it takes words among: {' '.join(SKIP_WORDS)})",
            status=2,
        )
    target_dir = env("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    return Settings(
        tf_runs=tf_runs,
        load_runs=load_runs,
        duration=duration,
        resources=whole(env("BENCH_RESOURCES", "200"), "BENCH_RESOURCES"),
        connections=[
            whole(c, "BENCH_CONNECTIONS") for c in env("BENCH_CONNECTIONS", "1 8 64").split()
        ],
        policy_calls=whole(env("BENCH_POLICY_CALLS", "20000"), "BENCH_POLICY_CALLS"),
        policy_rounds=whole(env("BENCH_POLICY_ROUNDS", "5"), "BENCH_POLICY_ROUNDS"),
        skip=skip,
        keep=bool(env("BENCH_KEEP")),
        results=env("BENCH_RESULTS")
        or os.path.join(target_dir, "bench", time.strftime("%Y%m%d-%H%M%S", time.gmtime())),
        target_dir=target_dir,
    )


def bulkhead_binary(s):
    """BULKHEAD_BIN, else target/release/bulkhead, built when missing."""
    given = os.environ.get("BULKHEAD_BIN")
    binary = given or os.path.join(s.target_dir, "release", "bulkhead")
    if os.access(binary, os.X_OK):
        return binary
    if given:
        raise Fatal(f"BULKHEAD_BIN={given} is not an executable file", status=2)
    if not shutil.which("cargo"):
        raise Fatal(
            f"{binary} is missing and cargo is not installed to build it: install Rust "
            "(https://rustup.rs) or set BULKHEAD_BIN",
            status=2,
        )
    log(f"building {binary} (cargo build --release)")
    if subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT).returncode != 0:
        raise Fatal("cargo build --release failed")
    return binary


def header(tools, binary, pg_version, load_before, load_after):
    """The table's head: when, on what machine and load, with which programs and binary."""
    versions = [
        needs.version([tools.terraform, "version"]) if tools.terraform else "terraform not used",
        (
            needs.version([tools.nginx, "-v"]).replace("nginx version: ", "", 1)
            if tools.nginx
            else "nginx not used"
        ),
        needs.version([tools.wrk, "--version"], words=2) if tools.wrk else "wrk not used",
        pg_version or "PostgreSQL not used",
    ]
    uname = os.uname()
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(binary)))
    return [
        "",
        RULE,
        f"bulkhead benchmark  {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
        f"machine: nproc {len(os.sched_getaffinity(0))}, {uname.sysname} {uname.release}, {', '.join(versions)}",
        f"         load average before {load_before}, after {load_after}; bulkhead binary {binary} (built {built})",
        RULE,
    ]


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def bench(run):
    s = run.s
    tools = needs.check(s)
    pol = None if s.skipped("policy") else policy.build(run)
    binary = bulkhead_binary(s)
    load_before = loadavg()
    applied = None if s.skipped("apply") else apply.measure(run, tools, binary)
    load = None
    if not (s.skipped("throughput") and s.skipped("lock")):
        load = throughput.measure(
            run, tools, binary, applied.servers.get("bulkhead") if applied else None
        )
    if pol:
        policy.measure(run, pol)
    load_after = loadavg()

    pg_version = applied.pg_version if applied else None
    lines = header(tools, binary, pg_version, load_before, load_after)
    if applied:
        lines += apply.table(applied, s)
    if load:
        lines += throughput.table(load, run)
    if pol:
        lines += policy.table(pol, s)
    lines.append(RULE)
    if run.failures:
        lines += ["FAILED:"] + [f"  {f}" for f in run.failures]
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    sys.stdout.flush()
    os.makedirs(s.results, exist_ok=True)
    with open(os.path.join(s.results, "table.txt"), "w") as f:
        f.write(text)
    log(f"the table and every run's figures (raw.jsonl): {s.results}")
    return 1 if run.failures else 0


def main(argv):
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        run = Run(settings(argv))
    except Fatal as e:
        print(e, file=sys.stderr)
        return e.status
    try:
        return bench(run)
    except Fatal as e:
        print(e, file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
    finally:
        run.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
