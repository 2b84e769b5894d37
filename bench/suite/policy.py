"""Benchmark 3: Cedar policy decisions per second and per-decision latency, evaluated each
time and remembered: the cargo bench benches/policy.rs, which prints one RESULT line. It is
built (`cargo bench --bench policy --no-run`, which also refreshes target/release/bulkhead)
before anything is measured, so that no compiler runs during a measurement; BENCH_POLICY_BIN
names a bench binary built already instead. When the current source does not build, the
newest earlier build is run and the table says so."""

import glob
import json
import os
import shutil
import subprocess
import time

from .common import ROOT, Fatal, error_line, log


class Bench:
    def __init__(self):
        self.exe = None
        self.note = ""  # what the table must say about the binary run
        self.result = None  # the RESULT fields
        self.human = ""  # the bench's own line on what it compiled and timed
        self.error = ""


def build(run):
    """The policy bench binary: BENCH_POLICY_BIN, else built now, else the newest earlier build."""
    p = Bench()
    given = os.environ.get("BENCH_POLICY_BIN")
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            raise Fatal(f"BENCH_POLICY_BIN={given} is not an executable file", status=2)
        p.exe = given
        return p
    log("building the policy bench (cargo bench --bench policy --no-run)")
    build_log = run.path("policy-build.log")
    why = ""
    if shutil.which("cargo"):
        with open(build_log, "wb") as err:
            out = subprocess.run(
                ["cargo", "bench", "--bench", "policy", "--no-run", "--message-format=json"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        if out.returncode == 0:
            for line in out.stdout.splitlines():
                exe = json.loads(line).get("executable") if line.startswith("{") else None
                if exe and os.path.basename(exe).startswith("policy-"):
                    p.exe = exe
        with open(build_log, errors="replace") as f:
            why = next((line.rstrip()[:120] for line in f if line.startswith("error")), "")
    else:
        why = "cargo not found"
    if p.exe:
        return p
    earlier = [
        f
        for f in glob.glob(os.path.join(run.s.target_dir, "release", "deps", "policy-*"))
        if os.path.isfile(f) and os.access(f, os.X_OK)
    ]
    if earlier:
        p.exe = max(earlier, key=os.path.getmtime)
        built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(p.exe)))
        p.note = f"stale bench binary of {built}: the current source does not build ({why or 'see cargo'})"
    else:
        p.note = f"the policy bench does not build: {why or 'see cargo'}"
    log(p.note)
    return p


def measure(run, p):
    s = run.s
    if not p.exe:
        run.failures.append(f"policy bench: {p.note}")
        return p
    log(f"policy: {s.policy_rounds} rounds of {s.policy_calls} calls, evaluated and remembered")
    out = run.path("policy.out")
    env = dict(
        os.environ, BENCH_POLICY_CALLS=str(s.policy_calls), BENCH_POLICY_ROUNDS=str(s.policy_rounds)
    )
    with open(out, "wb") as f:
        ok = (
            subprocess.run([p.exe, "--bench"], cwd=ROOT, stdout=f, stderr=f, env=env).returncode
            == 0
        )
    with open(out, errors="replace") as f:
        lines = f.read().splitlines()
    results = [line for line in lines if line.startswith("RESULT policy")] if ok else []
    if results:
        p.result = dict(word.split("=", 1) for word in results[-1].split()[2:] if "=" in word)
        p.human = next(
            (
                line[len("policy: ") :]
                for line in lines
                if line.startswith("policy: ") and "compiled" in line
            ),
            "",
        )
        run.record("policy", **p.result)
    else:
        p.error = error_line(out)
        run.failures.append(f"policy bench: {p.error}")
    return p


def table(p, s):
    lines = [
        "",
        f"3. Cedar policy (benches/policy.rs), median of {s.policy_rounds} rounds of {s.policy_calls} calls",
    ]
    if not p.result:
        return lines + [f"  n/a ({p.note or p.error})"]
    row = "  {:<34} {:>11} {:>10} {:>10}"
    r = p.result
    lines += [
        row.format("", "decisions/s", "p50 (us)", "p99 (us)"),
        row.format(
            "evaluate(), mixed allow/deny",
            r.get("decisions_per_s", ""),
            r.get("p50_us", ""),
            r.get("p99_us", ""),
        ),
        row.format(
            "decide(), the same, remembered",
            r.get("remembered_per_s", ""),
            r.get("remembered_p50_us", ""),
            r.get("remembered_p99_us", ""),
        ),
        f"  ({p.human})",
    ]
    if p.note:
        lines.append(f"  NOTE: {p.note}")
    return lines
