"""Benchmark 1: `terraform apply` of RESOURCES terraform_data resources, then a no-change
re-apply, with terraform's `local` backend (the floor), terraform's own `pg` backend (a fresh
schema per run), bulkhead on SQLite and bulkhead on PostgreSQL (its environment's `storage`),
the last two through terraform's `http` backend. Each run times every backend once, in a
rotating order, so that drift in the machine's load hits all alike. Targets: bulkhead within
1.10x of local, and faster than the pg backend."""

import os
import subprocess
import time

from .common import error_line, fmt_s, log, median, ratio, verdict
from .servers import Bulkhead, Postgres

BACKENDS = ("local", "pg", "bulkhead", "bulkhead-pg")
LABEL = {
    "local": "local backend",
    "pg": "terraform pg backend",
    "bulkhead": "bulkhead (SQLite)",
    "bulkhead-pg": "bulkhead (PostgreSQL)",
}


class Failed(Exception):
    """Why a backend has no figures; it is not timed again in later runs."""


def main_tf(resources, backend_block):
    return (
        'resource "terraform_data" "r" {\n'
        f"  count = {resources}\n"
        '  input = "value-${count.index}"\n'
        "}\n" + backend_block
    )


def backend_block(backend, run_id, i, pg, servers):
    if backend == "pg":
        schema = f"bench_{run_id.replace('-', '_')}_{i}"
        return f'terraform {{\n  backend "pg" {{\n    conn_str    = "{pg.tf_conn}"\n    schema_name = "{schema}"\n  }}\n}}\n'
    if backend in ("bulkhead", "bulkhead-pg"):
        url = f"{servers[backend].url}/v1/state/dev/apply-{run_id}-{i}"
        return (
            'terraform {\n  backend "http" {\n'
            f'    address        = "{url}"\n    lock_address   = "{url}"\n    unlock_address = "{url}"\n'
            '    lock_method    = "LOCK"\n    unlock_method  = "UNLOCK"\n  }\n}\n'
        )
    return ""


def timed(tf, cwd, logname, env, *args):
    """Runs `terraform ARGS` in CWD with its output in CWD/LOGNAME: the seconds it took, or
    None when it failed (or ran over 300 s)."""
    start = time.monotonic()
    with open(os.path.join(cwd, logname), "wb") as out:
        try:
            ok = (
                subprocess.run(
                    [tf, *args], cwd=cwd, stdout=out, stderr=out, env=env, timeout=300
                ).returncode
                == 0
            )
        except subprocess.TimeoutExpired:
            ok = False
    return time.monotonic() - start if ok else None


APPLY = ("apply", "-auto-approve", "-input=false", "-no-color")


def apply_once(tf, d, env):
    """terraform init, then one timed apply and one timed no-change re-apply in D:
    (apply s, re-apply s)."""
    if timed(tf, d, "init.log", env, "init", "-input=false", "-no-color") is None:
        raise Failed(f"init failed: {error_line(os.path.join(d, 'init.log'))}")
    applied = timed(tf, d, "apply.log", env, *APPLY)
    if applied is None:
        raise Failed(f"apply failed: {error_line(os.path.join(d, 'apply.log'))}")
    again = timed(tf, d, "noop.log", env, *APPLY)
    if again is None:
        raise Failed(f"re-apply failed: {error_line(os.path.join(d, 'noop.log'))}")
    with open(os.path.join(d, "noop.log"), errors="replace") as f:
        if "No changes" not in f.read():
            raise Failed("the re-apply was not a no-change apply")
    return applied, again


class Result:
    """The times of every backend, why a backend has none, the servers started (the SQLite
    one is measured again by benchmark 2) and what the table says of PostgreSQL."""

    def __init__(self):
        self.na = {}  # backend -> why it has no figures
        self.apply, self.noop = {b: [] for b in BACKENDS}, {b: [] for b in BACKENDS}
        self.servers = {}
        self.pg_note = ""
        self.pg_version = None

    def medians(self, b):
        return median(self.apply[b]), median(self.noop[b])


def start_servers(run, tools, binary, r):
    """PostgreSQL (unless both of its backends are skipped) and the two bulkheads; the
    backends that cannot be measured get their reason in r.na."""
    for b in ("pg", "bulkhead-pg"):
        if run.s.skipped(b):
            r.na[b] = "skipped (BENCH_SKIP)"
    pg = Postgres(run, tools.pg_bin)
    if "pg" not in r.na or "bulkhead-pg" not in r.na:
        log("starting PostgreSQL")
        why = pg.start()
        if why:
            log(f"PostgreSQL unavailable: {why}")
            for b in ("pg", "bulkhead-pg"):
                r.na.setdefault(b, f"PostgreSQL unavailable: {why}")
        r.pg_version = pg.version
    log("starting bulkhead (SQLite)")
    r.servers["bulkhead"] = bh = Bulkhead(run, binary, "bulkhead")
    if bh.problem():
        r.na["bulkhead"] = bh.problem() if bh.url else f"the server did not start: {bh.error}"
    if "bulkhead-pg" not in r.na:
        log("starting bulkhead (PostgreSQL storage)")
        r.servers["bulkhead-pg"] = bp = Bulkhead(run, binary, "bulkhead-pg", pg.storage)
        if bp.problem():
            r.na["bulkhead-pg"] = f"postgres storage unavailable: {bp.problem()}"
    return pg


def terraform_env(run):
    """terraform's environment: no prompts, no colours, no update check, an empty CLI config."""
    rc = run.path("terraformrc")
    open(rc, "w").close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_HTTP_")}
    env.update(TF_IN_AUTOMATION="1", TF_INPUT="0", CHECKPOINT_DISABLE="1", NO_COLOR="1")
    env["TF_CLI_CONFIG_FILE"] = rc
    return env


def measure(run, tools, binary):
    s, r = run.s, Result()
    pg = start_servers(run, tools, binary, r)
    tf, env = tools.terraform, terraform_env(run)

    # Warm-up (file cache, terraform binary): one untimed local apply.
    warm = run.path("tf", "warmup")
    os.makedirs(warm)
    with open(os.path.join(warm, "main.tf"), "w") as f:
        f.write(main_tf(s.resources, ""))
    if timed(tf, warm, "init.log", env, "init", "-input=false", "-no-color") is not None:
        timed(tf, warm, "apply.log", env, *APPLY)

    for i in range(1, s.tf_runs + 1):
        log(f"terraform apply: run {i} of {s.tf_runs}")
        k = (i - 1) % len(BACKENDS)
        for b in BACKENDS[k:] + BACKENDS[:k]:
            if b not in r.na:
                measure_once(run, tf, env, pg, r, b, i)

    for b in BACKENDS:
        why = r.na.get(b)
        if why and (
            b in ("local", "bulkhead")
            or (b == "pg" and not why.startswith(("skipped", "PostgreSQL unavailable")))
        ):
            run.failures.append(f"terraform apply, {LABEL[b]}: {why}")
    if "bulkhead-pg" not in r.na and tools.psql:
        r.pg_note = tables_note(tools.psql, pg.storage)
    pg.stop()
    return r


def measure_once(run, tf, env, pg, r, b, i):
    """Run I of backend B, in a directory of its own (and a state or schema of its own)."""
    env = dict(env)
    if b in r.servers:
        env.update(TF_HTTP_USERNAME="bench", TF_HTTP_PASSWORD=r.servers[b].token)
    d = run.path("tf", f"{b}-{i}")
    os.makedirs(d)
    with open(os.path.join(d, "main.tf"), "w") as f:
        f.write(main_tf(run.s.resources, backend_block(b, run.id, i, pg, r.servers)))
    try:
        applied, again = apply_once(tf, d, env)
    except Failed as e:
        r.na[b] = str(e)
        log(f"{b}: {e}")
        return
    r.apply[b].append(applied)
    r.noop[b].append(again)
    run.record("apply", backend=b, run=i, apply_s=round(applied, 4), reapply_s=round(again, 4))


def tables_note(psql, storage):
    """A note for the table unless bulkhead (PostgreSQL) really wrote to PostgreSQL."""
    query = (
        "select count(*) from information_schema.tables"
        " where table_schema not in ('pg_catalog', 'information_schema')"
    )
    out = subprocess.run([psql, storage, "-Atc", query], capture_output=True, text=True)
    tables = (out.stdout + out.stderr).strip()
    if tables.isdigit() and int(tables) > 0:
        return ""
    return f"bulkhead (PostgreSQL) left no tables in {storage} ({tables}): did it use PostgreSQL?"


def within(a, b):
    return a <= 1.10 * b


def faster(a, b):
    return a < b


def table(r, s):
    lines = [
        "",
        f"1. terraform apply: {s.resources} terraform_data resources (apply creates all; re-apply changes nothing),",
        f"   median of {s.tf_runs} runs; ratios: time / time of the local or the terraform pg backend (lower is faster)",
    ]
    row = "  {:<22} {:>9} {:>12} {:>12} {:>15} {:>9} {:>12}   {}"
    lines.append(
        row.format(
            "backend",
            "apply (s)",
            "re-apply (s)",
            "apply/local",
            "re-apply/local",
            "apply/pg",
            "re-apply/pg",
            "targets (apply, re-apply)",
        )
    )
    local = r.medians("local") if "local" not in r.na else (None, None)
    pg = r.medians("pg") if "pg" not in r.na else (None, None)
    for b in BACKENDS:
        if b in r.na:
            lines.append(f"  {LABEL[b]:<22} n/a ({r.na[b]})")
            continue
        a, n = r.medians(b)
        target = ""
        if b == "local":
            target = "(the floor)"
        elif b in ("bulkhead", "bulkhead-pg"):
            target = (
                f"<= 1.10x local: {verdict(a, local[0], within)}, {verdict(n, local[1], within)}"
                f"; faster than pg: {verdict(a, pg[0], faster)}, {verdict(n, pg[1], faster)}"
            )
        lines.append(
            row.format(
                LABEL[b],
                fmt_s(a),
                fmt_s(n),
                ratio(a, local[0]),
                ratio(n, local[1]),
                ratio(a, pg[0]),
                ratio(n, pg[1]),
                target,
            )
        )
    if r.pg_note:
        lines.append(f"  NOTE: {r.pg_note}")
    bp = r.servers.get("bulkhead-pg")
    if bp is not None and bp.url:
        errors = bp.log_lines("ERROR")
        lines.append(
            f"  bulkhead (PostgreSQL) server log: {len(errors)} ERROR, {len(bp.log_lines('WARN'))} WARN lines"
        )
        if errors:
            lines.append(f"    first ERROR: {errors[0][:240]}")
    return lines
