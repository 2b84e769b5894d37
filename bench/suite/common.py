"""What every benchmark shares: the settings of a run, its scratch directories and the processes
started in them (all stopped, and the directories removed, when the run ends), the raw results
file every measurement is appended to, and the arithmetic of the table (medians, ratios,
verdicts, number formats). Nothing here measures anything."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BENCH = os.path.join(ROOT, "bench")
# The words BENCH_SKIP understands.
SKIP_WORDS = ("apply", "pg", "bulkhead-pg", "throughput", "sync-all", "lock", "policy")
RULE = "=" * 94


class Fatal(Exception):
    """The run cannot go on: its message is printed, no table, and the bench exits with
    `status` (2 for bad usage or a missing program, 1 for a failed measurement)."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


@dataclass
class Settings:
    """The arguments and environment of one run, read once by bench.py."""

    tf_runs: int
    load_runs: int
    duration: int
    resources: int
    connections: list
    policy_calls: int
    policy_rounds: int
    skip: set
    keep: bool
    results: str
    target_dir: str

    def skipped(self, word):
        return word in self.skip


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_BOX = re.compile(r"^[│╷╵ ]*")


def plain(line):
    """LINE without its terminal colours."""
    return _ANSI.sub("", line)


def error_line(path):
    """The line that says what went wrong in a log: the first that says `error`, else the
    first (terraform's colours and box drawing taken off)."""
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    lines = [_BOX.sub("", plain(line)) for line in text.splitlines()]
    lines = [line for line in lines if line.strip()]
    for line in lines:
        if "error" in line.lower():
            return line[:160]
    return lines[0][:160] if lines else ""


def median(values):
    """The median, or None when there is nothing to take it of."""
    v = sorted(values)
    n = len(v)
    if n == 0:
        return None
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def ratio(a, b):
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.3f}x"


def verdict(a, b, holds):
    """`ok` or `MISSED` for a target `holds(a, b)`; `-` when a figure is missing."""
    if a is None or b is None:
        return "-"
    return "ok" if holds(a, b) else "MISSED"


def fmt_s(v):
    return "n/a" if v is None else f"{v:.3f}"


def fmt_ms(us):
    return "n/a" if us is None else f"{us / 1000:.3f}"


def fmt_n(v):
    return "n/a" if v is None else f"{v:.0f}"


def fmt_sum(values):
    if not values:
        return "n/a"
    s = sum(values)
    return str(int(s)) if s == int(s) else f"{s:g}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """One run of the bench: its settings, an id that names what it creates, its scratch
    directories and processes (stopped and removed by `close`, unless BENCH_KEEP=1), the
    required measurements that failed, and `record`, which appends one measurement to
    RESULTS/raw.jsonl as it is taken."""

    def __init__(self, settings):
        self.s = settings
        self.id = f"{int(time.time())}-{os.getpid()}"
        self.failures = []
        self._dirs = []
        self._procs = []
        self._on_close = []
        self.work = self.scratch("bulkhead-bench.")
        self._raw = None

    def scratch(self, prefix):
        d = tempfile.mkdtemp(prefix=prefix)
        self._dirs.append(d)
        return d

    def path(self, *parts):
        return os.path.join(self.work, *parts)

    def start(self, argv, stdout, stderr=None, **kwargs):
        """Starts a process with its output in two files (one when `stderr` is None); it is
        stopped when the run ends."""
        with open(stdout, "wb") as out, open(stderr or os.devnull, "wb") as err:
            proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=err if stderr else subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                **kwargs,
            )
        self._procs.append(proc)
        return proc

    def on_close(self, fn):
        self._on_close.append(fn)

    def record(self, bench, **fields):
        if self._raw is None:
            os.makedirs(self.s.results, exist_ok=True)
            self._raw = open(os.path.join(self.s.results, "raw.jsonl"), "a")
        self._raw.write(json.dumps({"run_id": self.id, "bench": bench, **fields}) + "\n")
        self._raw.flush()

    def close(self):
        for p in self._procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 5
        for p in self._procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for fn in reversed(self._on_close):
            fn()
        if self._raw is not None:
            self._raw.close()
        if self.s.keep:
            print(f"kept: {' '.join(self._dirs)}", file=sys.stderr)
        else:
            for d in self._dirs:
                shutil.rmtree(d, ignore_errors=True)
