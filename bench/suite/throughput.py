"""Benchmark 2: server throughput on loopback with wrk at each connection count (threads:
min(conns, 2)): an authenticated, authorized, audited GET of a 100 KB state from bulkhead;
the same file as a static file from nginx (the baseline; target: bulkhead >= 0.5x its req/s);
the same GET from a bulkhead with `audit_sync = "all"` (every record flushed before its
answer); and LOCK -> POST -> UNLOCK cycles on bulkhead, one state per connection (one wrk
thread per connection, so that each connection's Lua state drives its own cycle). The wrk
scripts are bench/wrk/get.lua and bench/wrk/cycle.lua; each prints one RESULT line."""

import os
import subprocess
import uuid

from .common import BENCH, Fatal, error_line, fmt_ms, fmt_n, fmt_sum, log, median, ratio, verdict
from .servers import Bulkhead, basic, http, nginx

STATE_BYTES = 102400
ROW = "  {:<34} {:>6} {:>11} {:>10} {:>10} {:>8} {:>7}   {}"
GET_SCRIPT = os.path.join(BENCH, "wrk", "get.lua")
CYCLE_SCRIPT = os.path.join(BENCH, "wrk", "cycle.lua")
NAMES = {
    "bulkhead-get": "bulkhead GET (auth+policy+audit)",
    "nginx-get": "nginx static GET (baseline)",
    "bulkhead-get-all": 'bulkhead GET, audit_sync = "all"',
}
# The RESULT fields kept from a run that got responses; one that got none keeps only the
# counts, so that it is flagged and left out of the medians.
FIELDS = "rps p50_us p99_us requests non2xx errors bytes cps cp50_us cp99_us lock_fail post_fail unlock_fail statuses".split()
DEAD_FIELDS = ("requests", "non2xx", "errors")


def make_state(path):
    """A valid terraform state of about STATE_BYTES bytes: terraform_data instances."""
    head = (
        '{"version":4,"terraform_version":"1.11.4","serial":1,"lineage":"'
        + str(uuid.uuid4())
        + '","outputs":{},'
        '"resources":[{"mode":"managed","type":"terraform_data","name":"pad",'
        '"provider":"provider[\\"terraform.io/builtin/terraform\\"]","instances":['
    )
    tail = ']}],"check_results":null}'
    pad = "x" * 200
    instances, n = [], 0
    while (
        len(head) + sum(map(len, instances)) + max(0, len(instances) - 1) + len(tail) < STATE_BYTES
    ):
        value = f'{{"value":"value-{n}-{pad}","type":"string"}}'
        instances.append(
            f'{{"index_key":{n},"schema_version":0,"attributes":{{"id":"{uuid.uuid4()}","input":{value},'
            f'"output":{value},"triggers_replace":null}},"sensitive_attributes":[]}}'
        )
        n += 1
    with open(path, "w") as f:
        f.write(head + ",".join(instances) + tail + "\n")


class Runs:
    """Every wrk run of one case at one connection count: its RESULT fields, a list per
    field, and what went wrong."""

    def __init__(self):
        self.fields = {}
        self.problems = []

    def values(self, field):
        return self.fields.get(field, [])

    def median(self, field):
        return median(self.values(field))

    def row(self, name, conns, fields, note):
        """The table's row: the medians of FIELDS (a rate, p50 and p99 in microseconds), the
        non-2xx answers and socket errors summed over all runs, and NOTE."""
        rate, p50, p99 = (self.median(f) for f in fields)
        sums = (fmt_sum(self.values(f)) for f in ("non2xx", "errors"))
        return ROW.format(name, conns, fmt_n(rate), fmt_ms(p50), fmt_ms(p99), *sums, note)

    def dead(self):
        """'NO RESPONSES in K of N runs ...' when some runs got no response at all."""
        requests = self.values("requests")
        if not requests:
            return "NO RESULT (see the wrk problems)"
        k = sum(1 for v in requests if v == 0)
        return f"NO RESPONSES in {k} of {len(requests)} runs (median of the others)" if k else ""


class Load:
    """Every wrk run of this benchmark, by case and connection count, and what the table needs
    besides: the server whose log it reports, the state's size, whether audit_sync = "all"
    was measured."""

    def __init__(self, run, wrk):
        self.run, self.wrk_bin = run, wrk
        self.count = 0  # wrk runs so far: names each run's output file
        self.runs = {}  # (case, conns) -> Runs
        self.server = None  # the bulkhead (SQLite) measured
        self.state_size = 0
        self.with_all = False

    def of(self, case, conns):
        return self.runs.setdefault((case, conns), Runs())

    def wrk(self, case, conns, threads, script, url, env, r):
        """One wrk run; its RESULT fields are kept under (CASE, CONNS) and in the raw file."""
        run, d = self.run, self.run.s.duration
        self.count += 1
        out = self.run.path("load", f"{case}-{conns}.{self.count}.out")
        runs = self.of(case, conns)
        argv = [
            self.wrk_bin,
            f"-t{threads}",
            f"-c{conns}",
            f"-d{d}s",
            "--timeout",
            "10s",
            "-s",
            script,
            url,
        ]
        with open(out, "wb") as f:
            try:
                ok = (
                    subprocess.run(argv, stdout=f, stderr=f, env=env, timeout=d + 60).returncode
                    == 0
                )
            except subprocess.TimeoutExpired:
                ok = False
        if not ok:
            log(f"wrk failed ({case}, {conns} connections): {error_line(out)}")
            runs.problems.append(f"wrk failed: {error_line(out)}")
            return
        with open(out, errors="replace") as f:
            results = [line for line in f.read().splitlines() if line.startswith("RESULT")]
        if not results:
            runs.problems.append(f"no RESULT line from wrk: {error_line(out)}")
            return
        got = dict(word.split("=", 1) for word in results[-1].split()[1:] if "=" in word)
        keep = DEAD_FIELDS if got.get("requests") == "0" else FIELDS
        for k in keep:
            if k in got:
                runs.fields.setdefault(k, []).append(got[k] if k == "statuses" else float(got[k]))
        if case != "warmup":
            run.record("wrk", case=case, conns=conns, run=r, **got)


def measure(run, tools, binary, bulkhead):
    """The wrk runs, interleaved: for each run, each connection count, each case. BULKHEAD is
    the SQLite server started for benchmark 1, or None."""
    s, load = run.s, Load(run, tools.wrk)
    www = run.path("www")
    os.makedirs(run.path("load"))
    os.makedirs(www)
    state = os.path.join(www, "state.json")
    make_state(state)
    load.state_size = os.path.getsize(state)
    if bulkhead is None or bulkhead.url is None:
        log("starting bulkhead (SQLite)")
        bulkhead = Bulkhead(run, binary, "bulkhead")
    if bulkhead.problem():
        run.failures.append(f"throughput: bulkhead did not start: {bulkhead.problem()}")
        return None
    load.server = bulkhead
    with open(state, "rb") as f:
        body = f.read()
    get_url = f"{bulkhead.url}/v1/state/dev/get-100k"
    code, said = http("POST", get_url, bulkhead.token, body, "application/json")
    if code != 200:
        raise Fatal(
            f"POST of the 100 KB state answered {code}: {said[:300].decode(errors='replace')}"
        )
    if http("GET", get_url, bulkhead.token)[1] != body:
        raise Fatal("GET did not return the state POSTed")
    env = dict(os.environ, BENCH_BASIC=basic(bulkhead.token), BENCH_STATE_FILE=state)

    # The same server with every audit record flushed to disk before its answer.
    env_all = None
    if not s.skipped("throughput") and not s.skipped("sync-all"):
        log('starting bulkhead (SQLite, audit_sync = "all")')
        every = Bulkhead(run, binary, "bulkhead-all", "", 'audit_sync = "all"')
        if every.problem():
            run.failures.append(
                f"throughput: bulkhead (audit_sync = all) did not start: {every.problem()}"
            )
        else:
            http(
                "POST", f"{every.url}/v1/state/dev/get-100k", every.token, body, "application/json"
            )
            env_all = dict(env, BENCH_BASIC=basic(every.token))
            all_url = f"{every.url}/v1/state/dev/get-100k"
            load.with_all = True

    ngx = (
        f"{nginx(run, tools.nginx, www, 'state.json')}/state.json"
        if not s.skipped("throughput")
        else None
    )

    log("warm-up")
    load.wrk("warmup", 8, 2, GET_SCRIPT, get_url, env, 0)
    if ngx:
        load.wrk("warmup", 8, 2, GET_SCRIPT, ngx, env, 0)
    if env_all:
        load.wrk("warmup", 8, 2, GET_SCRIPT, all_url, env_all, 0)
    for r in range(1, s.load_runs + 1):
        for c in s.connections:
            t = min(c, 2)
            if not s.skipped("throughput"):
                log(f"wrk run {r} of {s.load_runs}, {c} connections: GET bulkhead, GET nginx")
                load.wrk("bulkhead-get", c, t, GET_SCRIPT, get_url, env, r)
                load.wrk("nginx-get", c, t, GET_SCRIPT, ngx, env, r)
                if env_all:
                    load.wrk("bulkhead-get-all", c, t, GET_SCRIPT, all_url, env_all, r)
            if not s.skipped("lock"):
                log(f"wrk run {r} of {s.load_runs}, {c} connections: LOCK/POST/UNLOCK cycles")
                cycle_env = dict(env, BENCH_PREFIX=f"cycle-{run.id}-r{r}-c{c}")
                load.wrk("cycle", c, c, CYCLE_SCRIPT, bulkhead.url, cycle_env, r)
    return load


def table(load, run):
    s = run.s
    lines = [
        "",
        f"2. throughput on loopback (wrk, {s.duration}s per run, median of {s.load_runs} runs; state {load.state_size} bytes;",
        "   latency per request, per cycle for cycles; non-2xx and socket errors summed over all runs;",
        "   a run that got no response at all is flagged and left out of the medians)",
        ROW.format("case", "conns", "req/s", "p50 (ms)", "p99 (ms)", "non-2xx", "errors", ""),
    ]
    for c in s.connections:
        if not s.skipped("throughput"):
            lines += get_rows(load, run, c)
        if not s.skipped("lock"):
            lines.append(cycle_row(load, run, c))
    errors, warns = load.server.log_lines("ERROR"), load.server.log_lines("WARN")
    lines.append(f"  bulkhead (SQLite) server log: {len(errors)} ERROR, {len(warns)} WARN lines")
    if errors:
        lines.append(f"    first ERROR: {errors[0][:240]}")
    if warns:
        lines.append(f"    first WARN:  {warns[0][:240]}")
    return lines


def at_least_half(a, b):
    return a >= 0.5 * b


def get_rows(load, run, c):
    lines = []
    for case in ("bulkhead-get", "nginx-get") + (("bulkhead-get-all",) if load.with_all else ()):
        runs, name = load.of(case, c), NAMES[case]
        note, dead, size = "", runs.dead(), runs.median("bytes")
        if dead:
            note = dead
            run.failures.append(f"throughput: {name} at {c} connections: {dead}")
        elif size is not None and size < load.state_size:
            note = f"responses average {fmt_n(size)} bytes, less than the state!"
        if runs.problems:
            note = f"{note} {runs.problems[0]}"
        lines.append(runs.row(name, c, ("rps", "p50_us", "p99_us"), note))
    b, n = load.of("bulkhead-get", c).median("rps"), load.of("nginx-get", c).median("rps")
    lines.append(
        ROW.format(
            "bulkhead / nginx req/s",
            c,
            ratio(b, n),
            "",
            "",
            "",
            "",
            f"target >= 0.5x: {verdict(b, n, at_least_half)}",
        )
    )
    if load.with_all:
        lines.append(
            "  {:<34} {:>6} {:>11}".format(
                'audit_sync = "all" / nginx req/s',
                c,
                ratio(load.of("bulkhead-get-all", c).median("rps"), n),
            )
        )
    return lines


def cycle_row(load, run, c):
    runs = load.of("cycle", c)
    note, dead = f"cycles/s; requests/s {fmt_n(runs.median('rps'))}", runs.dead()
    if dead:
        note = f"{dead}; {note}"
        run.failures.append(f"throughput: lock cycles at {c} connections: {dead}")
    fails = "/".join(fmt_sum(runs.values(f)) for f in ("lock_fail", "post_fail", "unlock_fail"))
    if fails != "0/0/0":
        statuses = " ".join(sorted(set(runs.values("statuses")))) or "n/a"
        note = f"{note}; failed LOCK/POST/UNLOCK {fails}; statuses {statuses}"
    if runs.problems:
        note = f"{note} {runs.problems[0]}"
    return runs.row("bulkhead LOCK+POST+UNLOCK cycle", c, ("cps", "cp50_us", "cp99_us"), note)
