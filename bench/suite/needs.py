"""The programs a run needs, found before anything is built or measured: on PATH or where
Debian puts them; when some are missing and the bench runs as root on a system with apt-get,
installed with `apt-get install -y`; otherwise named, with the package or page that has them,
and the bench stops with status 2. Only what the run will use is asked for (BENCH_SKIP)."""

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass

from .common import Fatal, log

TERRAFORM_HELP = (
    "not a Debian package: see https://developer.hashicorp.com/terraform/install\n"
    "                  (HashiCorp's apt repository has it; TERRAFORM names one elsewhere)"
)


@dataclass
class Tools:
    terraform: str = None
    wrk: str = None
    nginx: str = None
    pg_bin: str = None  # the directory of initdb, pg_ctl, createdb, postgres
    psql: str = None


def which(name):
    return shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )


def terraform():
    tf = os.environ.get("TERRAFORM", "/usr/local/bin/terraform")
    return tf if os.access(tf, os.X_OK) else shutil.which("terraform")


def postgres_bin():
    """The newest /usr/lib/postgresql/*/bin (Debian's place), else the directory of initdb
    on PATH, when it has initdb and pg_ctl."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key)
    initdb = shutil.which("initdb")
    for d in ([dirs[-1]] if dirs else []) + ([os.path.dirname(initdb)] if initdb else []):
        if all(os.access(os.path.join(d, p), os.X_OK) for p in ("initdb", "pg_ctl")):
            return d
    return None


def _version_key(path):
    return [int(p) if p.isdigit() else 0 for p in path.split("/")[-2].split(".")]


def psql(pg_bin):
    found = shutil.which("psql")
    if found:
        return found
    if pg_bin and os.access(os.path.join(pg_bin, "psql"), os.X_OK):
        return os.path.join(pg_bin, "psql")
    return None


def find(s):
    """(Tools found, {program: Debian package} of the missing ones that apt-get has, and the
    lines naming missing programs that it has not)."""
    tools, apt, other = Tools(), {}, []
    if not s.skipped("apply"):
        tools.terraform = terraform()
        if not tools.terraform:
            other.append(f"  {'terraform':<15} {TERRAFORM_HELP}")
        wants_pg = not (s.skipped("pg") and s.skipped("bulkhead-pg"))
        if wants_pg and not os.environ.get("BENCH_POSTGRES_URL"):
            tools.pg_bin = postgres_bin()
            if not tools.pg_bin:
                apt["initdb, pg_ctl"] = "postgresql"
        tools.psql = psql(tools.pg_bin)
    if not (s.skipped("throughput") and s.skipped("lock")):
        tools.wrk = which("wrk")
        if not tools.wrk:
            apt["wrk"] = "wrk"
    if not s.skipped("throughput"):
        tools.nginx = which("nginx")
        if not tools.nginx:
            apt["nginx"] = "nginx"
    return tools, apt, other


def apt_install(packages, logfile):
    """apt-get install -y PACKAGES, with an apt-get update first if the lists are stale."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    with open(logfile, "ab") as out:

        def apt(*args):
            return (
                subprocess.run(["apt-get", *args], stdout=out, stderr=out, env=env).returncode == 0
            )

        return apt("install", "-y", *packages) or (
            apt("update") and apt("install", "-y", *packages)
        )


def check(s):
    """The tools of this run, installing the missing Debian packages when it can (apt-get's
    output goes to RESULTS/apt.log); raises Fatal (status 2) naming what to install when it
    cannot."""
    tools, apt, other = find(s)
    packages = sorted(set(apt.values()))
    lines = []
    if packages and os.geteuid() == 0 and shutil.which("apt-get"):
        log(f"installing {' '.join(packages)} (apt-get install -y {' '.join(packages)})")
        os.makedirs(s.results, exist_ok=True)
        logfile = os.path.join(s.results, "apt.log")
        if apt_install(packages, logfile):
            tools, apt, other = find(s)
        else:
            lines.append(f"  (apt-get install failed: see {logfile})")
    elif packages:
        lines.append("  (run the bench as root to have it install the Debian packages itself)")
    if not (apt or other):
        return tools
    missing = [f"  {name:<15} apt-get install -y {pkg}" for name, pkg in apt.items()] + other
    raise Fatal(
        "\n".join(
            ["bench/run.sh needs programs that are not installed:"]
            + missing
            + lines
            + [
                "  (BENCH_SKIP leaves out what needs them: terraform for apply, PostgreSQL for pg",
                "  and bulkhead-pg, or set BENCH_POSTGRES_URL; wrk for throughput and lock; nginx",
                "  for throughput)",
            ]
        ),
        status=2,
    )


def version(argv, words=None):
    """The first line a program prints for its version (stdout and stderr), or ''."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (out.stdout + out.stderr).splitlines()
    first = lines[0] if lines else ""
    return " ".join(first.split(" ")[:words]) if words else first
