#!/usr/bin/env python3
"""What slow, idle and large requests cost a `bulkhead serve`, one function per case, printed
as one table (and the raw figures as JSON lines on stderr):

  plan_upload       peak RSS growth (VmHWM) of a fresh server taking one POST /v1/changes of a
                    plan of PLAN_MB megabytes (`terraform show -json` shape, default 32);
  half_open         RSS, VmSize, open files and a /healthz answer with N connections (default
                    500) that sent part of their headers and stopped; then again after the
                    server's header_timeout (default 10 s) has passed;
  declared_bodies   the same with M connections (default 50) that sent a whole POST
                    /v1/changes head declaring a 256 MiB body, and no body, against a
                    server limited to 4 GiB of address space (max_plan_size 512 MiB);
  open_file_limit   1100 half-open connections against a server whose open-file limit is
                    1024 (soft and hard): does /healthz answer (within 30 s)?
  over_the_cap      200 half-open connections against a server with max_connections = 100:
                    how long /healthz waits (this build only).

    bench/resources.py [--plan-mb 32] [--connections 500] [--declared 50]

BULKHEAD_BIN is the binary measured (default target/release/bulkhead, built if missing);
BASELINE_BIN, when set, is measured too, side by side (e.g. a build of an earlier commit:
`git worktree add /tmp/base a6bbd92 && cargo build --release --manifest-path
/tmp/base/Cargo.toml`). Settings the baseline does not know are left out of its config.
Only loopback is used; every server it starts is stopped and its directory removed.
Linux only (/proc).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Server:
    """A `bulkhead serve` in a directory of its own, with a token for the user `bench`."""

    def __init__(self, binary, server_lines="", env_lines="", address_space_gib=None,
                 open_files=None, config_text=None, start_timeout=30):
        """CONFIG_TEXT, when given, is the whole config (server_lines and env_lines are then
        not used); START_TIMEOUT is how long it may take to listen. `start_seconds` is how
        long it took."""
        self.dir = tempfile.mkdtemp(prefix="bulkhead-resources-")
        self.binary = binary
        self.config = config = os.path.join(self.dir, "bulkhead.hcl")
        with open(config, "w") as f:
            f.write(config_text or
                f"""
server {{
  data_dir = "data"
  {server_lines}
}}
team "app" {{ members = ["bench", "owner"] }}
service "ci" {{}}
environment "prod" {{
  owner = "team:app"
  read  = ["team:app"]
  write = ["service:ci"]
  {env_lines}
  approval {{ required = 1 }}
}}
"""
            )
        self.out = open(os.path.join(self.dir, "serve.out"), "w+")
        self.log = open(os.path.join(self.dir, "serve.log"), "w")
        def limit():
            import resource

            if address_space_gib:
                size = address_space_gib << 30
                resource.setrlimit(resource.RLIMIT_AS, (size, size))
            if open_files:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        started = time.monotonic()
        self.proc = subprocess.Popen(
            [binary, "serve", "--config", config, "--listen", "127.0.0.1:0"],
            cwd=self.dir,
            stdout=self.out,
            stderr=self.log,
            preexec_fn=limit,
        )
        deadline = started + start_timeout
        self.base = None
        while time.monotonic() < deadline and self.base is None and self.alive():
            self.out.seek(0)
            for line in self.out:
                if line.startswith("bulkhead listening on "):
                    self.base = line.split()[-1]
            if self.base is None:
                time.sleep(0.005)
        self.start_seconds = time.monotonic() - started
        if self.base is None:
            self.stop()
            sys.exit(f"{binary} did not start; see its log")
        self.port = int(self.base.rsplit(":", 1)[1])
        self.token = subprocess.check_output(
            [binary, "token", "create", "bench", "--config", config],
            cwd=self.dir,
            stderr=subprocess.DEVNULL,
            text=True,
        ).strip()

    def figure(self, key):
        """A /proc/PID/status figure as it stands there, a count or kB (None once the process
        is gone)."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        return int(line.split()[1])
        except OSError:
            pass
        return None

    def status(self, key):
        """A /proc/PID/status figure of memory, in MB (None once the process is gone)."""
        kb = self.figure(key)
        return None if kb is None else round(kb / 1024, 1)

    def open_files(self):
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return None

    def healthz(self, timeout):
        """Seconds until /healthz answered 200, or None."""
        start = time.time()
        try:
            with urllib.request.urlopen(self.base + "/healthz", timeout=timeout) as r:
                return round(time.time() - start, 3) if r.status == 200 else None
        except (urllib.error.URLError, OSError):
            return None

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def auth(token):
    import base64

    return "Basic " + base64.b64encode(f"bench:{token}".encode()).decode()


def write_plan(path, mb):
    """A plan of about `mb` megabytes, shaped as `terraform show -json` prints one: planned
    values, and resource changes with their before and after, each a resource's attributes
    (many small values, as real resources have: tags, rules, flags)."""

    def values(i):
        return {"id": f"r-{i}", "arn": f"arn:aws:ec2:eu-west-1:123456789012:instance/r-{i}",
                "enabled": i % 2 == 0, "count": i,
                "tags": {f"tag{j}": f"value-{j}" for j in range(12)},
                "rules": [{"port": 8000 + j, "protocol": "tcp", "cidr": "10.0.0.0/16"}
                          for j in range(4)]}

    one = len(json.dumps(values(0))) * 3 + 200
    count = max(1, (mb << 20) // one)
    plan = {
        "format_version": "1.2",
        "terraform_version": "1.11.4",
        "planned_values": {
            "root_module": {
                "resources": [
                    {"address": f"aws_instance.r[{i}]", "type": "aws_instance",
                     "name": "r", "index": i, "values": values(i)}
                    for i in range(count)
                ]
            }
        },
        "resource_changes": [
            {"address": f"aws_instance.r[{i}]", "type": "aws_instance", "name": "r",
             "change": {"actions": ["update"], "before": values(i), "after": values(i + 1),
                        "after_unknown": {}, "before_sensitive": {}, "after_sensitive": {}}}
            for i in range(count)
        ],
        "configuration": {"root_module": {}},
    }
    with open(path, "w") as f:
        json.dump(plan, f)
    return os.path.getsize(path)


def plan_upload(binary, mb, baseline):
    server = Server(binary, env_lines="" if baseline else f'max_plan_size = "{mb + 8}MiB"')
    try:
        path = os.path.join(server.dir, "plan.json")
        size = write_plan(path, mb)
        before = server.status("VmHWM") or 0
        with open(path, "rb") as f:
            body = f.read()
        req = urllib.request.Request(
            server.base + "/v1/changes?environment=prod&state=network&title=bench",
            data=body,
            method="POST",
            headers={"Authorization": auth(server.token), "Content-Type": "application/json"},
        )
        del body
        try:
            with urllib.request.urlopen(req, timeout=300) as r:
                code = r.status
        except urllib.error.HTTPError as e:
            code = e.code
        peak = server.status("VmHWM") or float("nan")
        return {"plan MB": round(size / 2**20, 1), "status": code,
                "idle RSS MB": round(before, 1), "peak RSS MB": round(peak, 1),
                "growth MB": round(peak - before, 1),
                "growth/size": round((peak - before) * 2**20 / size, 2)}
    finally:
        server.stop()


def hold(server, count, payload):
    """`count` connections that each sent `payload` and then nothing."""
    held = []
    for _ in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            s.sendall(payload)
        except OSError:
            continue
        held.append(s)
    return held


def snapshot(server, label, healthz_timeout=5):
    return {"when": label, "alive": server.alive(), "RSS MB": server.status("VmRSS"),
            "VmSize MB": server.status("VmSize"), "open files": server.open_files(),
            "healthz s": server.healthz(healthz_timeout)}


def idle_case(binary, count, payload, server_lines=""):
    server = Server(binary, server_lines=server_lines)
    try:
        rows = [snapshot(server, "before")]
        held = hold(server, count, payload)
        time.sleep(1)
        rows.append(snapshot(server, f"{count} open"))
        time.sleep(11)
        rows.append(snapshot(server, "12 s later"))
        for s in held:
            s.close()
        return rows
    finally:
        server.stop()


def half_open(binary, count):
    return idle_case(binary, count, b"GET /healthz HTTP/1.1\r\nHost: bench\r\nUser-Agent: slo")


def declared_bodies(binary, count, baseline):
    # Under a memory limit, as a container or systemd's MemoryMax= would set one (here the
    # address space, which counts what is reserved, touched or not). The plan limit is set
    # above the declared length, so that the bodies are waited for rather than refused.
    env_lines = "" if baseline else 'max_plan_size = "512MiB"'
    server = Server(binary, env_lines=env_lines, address_space_gib=4)
    try:
        head = (
            "POST /v1/changes?environment=prod&state=network HTTP/1.1\r\nHost: bench\r\n"
            f"Authorization: {auth(server.token)}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {256 << 20}\r\n\r\n"
        ).encode()
        rows = [snapshot(server, "before")]
        held = hold(server, count, head)
        time.sleep(1)
        rows.append(snapshot(server, f"{count} declared 256 MiB"))
        for s in held:
            s.close()
        return rows
    finally:
        server.stop()


def over_the_cap(binary, cap):
    """Twice `cap` half-open connections against a server that serves `cap` at once: the
    ones over it wait in the backlog, and /healthz waits for the header timeout to free
    permits."""
    server = Server(binary, server_lines=f"max_connections = {cap}")
    try:
        held = hold(server, 2 * cap, b"GET /healthz HTTP/1.1\r\nHost: bench\r\nUser-Agent: slo")
        row = snapshot(server, f"{2 * cap} open, cap {cap}", healthz_timeout=30)
        for s in held:
            s.close()
        return [row]
    finally:
        server.stop()


def open_file_limit(binary, count):
    """`count` half-open connections against a server whose open-file limit is 1024 (soft and
    hard, the usual default): more connections than files."""
    server = Server(binary, open_files=1024)
    try:
        held = hold(server, count, b"GET /healthz HTTP/1.1\r\nHost: bench\r\nUser-Agent: slo")
        row = snapshot(server, f"{len(held)} open, 1024 files", healthz_timeout=30)
        for s in held:
            s.close()
        return [row]
    finally:
        server.stop()


def table(title, rows):
    print(f"\n{title}")
    if not rows:
        return
    keys = list(rows[0].keys())
    widths = [max(len(k), *(len(str(r.get(k))) for r in rows)) for k in keys]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for r in rows:
        print("  ".join(str(r.get(k)).ljust(w) for k, w in zip(keys, widths)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan-mb", type=int, default=32)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--declared", type=int, default=50)
    args = parser.parse_args()
    binary = os.environ.get("BULKHEAD_BIN", os.path.join(ROOT, "target/release/bulkhead"))
    if not os.access(binary, os.X_OK):
        subprocess.check_call(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
    binaries = [("this build", binary, False)]
    if os.environ.get("BASELINE_BIN"):
        binaries.insert(0, ("baseline", os.environ["BASELINE_BIN"], True))

    results = {}
    for name, path, baseline in binaries:
        results[name] = {
            "plan": plan_upload(path, args.plan_mb, baseline),
            "half_open": half_open(path, args.connections),
            "declared": declared_bodies(path, args.declared, baseline),
            "files": open_file_limit(path, 1100),
        }
        if not baseline:
            results[name]["cap"] = over_the_cap(path, 100)
        print(json.dumps({name: results[name]}), file=sys.stderr)

    table(f"POST /v1/changes of a {args.plan_mb} MB plan",
          [dict(binary=n, **r["plan"]) for n, r in results.items()])
    table(f"{args.connections} half-open connections (partial headers, then nothing)",
          [dict(binary=n, **row) for n, r in results.items() for row in r["half_open"]])
    table(f"{args.declared} connections declaring a 256 MiB plan and sending none of it"
          " (4 GiB address-space limit)",
          [dict(binary=n, **row) for n, r in results.items() for row in r["declared"]])
    table("1100 half-open connections, open-file limit 1024 (/healthz waited for up to 30 s)",
          [dict(binary=n, **row) for n, r in results.items() for row in r["files"]])
    for n, r in results.items():
        if "cap" in r:
            table(f"200 half-open connections, max_connections = 100 ({n})", r["cap"])


if __name__ == "__main__":
    main()
