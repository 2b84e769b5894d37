"""The servers a run measures or measures against: `bulkhead serve` with a config of its own,
a throwaway PostgreSQL cluster (or BENCH_POSTGRES_URL), and nginx serving one file. Each
lives in the run's scratch directory and is stopped when the run ends; none is measured
here."""

import base64
import os
import pwd
import subprocess
import time
import urllib.error
import urllib.request

from .common import Fatal, error_line, free_port, log, plain


def http(method, url, token=None, body=None, content_type=None):
    """(status, body) of one request; `token` is sent as the password of the user `bench`."""
    req = urllib.request.Request(url, data=body, method=method)
    if token is not None:
        req.add_header("Authorization", "Basic " + basic(token))
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def basic(token):
    """The credentials of HTTP Basic auth for the user `bench` with TOKEN, base64-encoded."""
    return base64.b64encode(f"bench:{token}".encode()).decode()


CONFIG = """server {{
  data_dir = "data"
{extra}}}
team "app" {{ members = ["bench"] }}
environment "dev" {{
  owner = "team:app"
  read  = ["team:app"]
  write = ["team:app"]
{storage}}}
"""


class Bulkhead:
    """`bulkhead serve` on a free loopback port with one environment `dev` that the user
    `bench` may read and write, `storage` its storage URL (SQLite when empty) and `extra` one
    more line of its server block. `url` is None and `error` says why when it did not start;
    `token` is None when `bulkhead token create` failed."""

    def __init__(self, run, binary, name, storage="", extra=""):
        self.dir = run.path(name)
        self.url = self.token = self.error = None
        os.makedirs(self.dir, exist_ok=True)
        config = os.path.join(self.dir, "bulkhead.hcl")
        with open(config, "w") as f:
            f.write(
                CONFIG.format(
                    extra=f"  {extra}\n" if extra else "",
                    storage=f'  storage = "{storage}"\n' if storage else "",
                )
            )
        out, self.log = os.path.join(self.dir, "serve.out"), os.path.join(self.dir, "serve.log")
        proc = run.start(
            [binary, "serve", "--config", config, "--listen", "127.0.0.1:0"], out, self.log
        )
        for _ in range(300):
            if os.path.getsize(out) > 0 or proc.poll() is not None:
                break
            time.sleep(0.05)
        with open(out) as f:
            urls = [
                line.split("bulkhead listening on ", 1)[1].strip()
                for line in f
                if line.startswith("bulkhead listening on ")
            ]
        if not urls:
            proc.kill()
            self.error = error_line(self.log) or "no address printed within 15 s"
            return
        self.url = urls[0]
        token_log = os.path.join(self.dir, "token.log")
        with open(token_log, "wb") as err:
            made = subprocess.run(
                [binary, "token", "create", "bench", "--config", config],
                stdout=subprocess.PIPE,
                stderr=err,
            )
        if made.returncode == 0:
            self.token = made.stdout.decode().rstrip("\n")
        else:
            log(f"token create failed: {error_line(token_log)}")

    def problem(self):
        """Why this server cannot be measured, or None."""
        if self.url is None:
            return self.error
        return None if self.token else "token create failed"

    def log_lines(self, level):
        """The lines of the server's log at LEVEL (ERROR, WARN)."""
        with open(self.log, errors="replace") as f:
            text = f.read()
        return [line for line in map(plain, text.splitlines()) if f" {level} " in line]


class Postgres:
    """A throwaway PostgreSQL cluster on a free port with a database `bulkhead` (owned by the
    `postgres` user, or `nobody`, when run as root), or BENCH_POSTGRES_URL. `tf_conn` is
    terraform's pg conn_str, `storage` bulkhead's storage URL; `start` returns None or why
    it could not."""

    def __init__(self, run, pg_bin):
        self.run, self.pg_bin = run, pg_bin
        self.tf_conn = self.storage = self.version = None
        self.dir = None
        self.as_owner = []

    def start(self):
        url = os.environ.get("BENCH_POSTGRES_URL")
        if url:
            self.tf_conn = self.storage = url
            self.version = "BENCH_POSTGRES_URL"
            return None
        self.dir = self.run.scratch("bulkhead-bench-pg.")
        if os.geteuid() == 0:
            owner = "postgres" if _user_exists("postgres") else "nobody"
            os.chown(self.dir, pwd.getpwnam(owner).pw_uid, -1)
            self.as_owner = ["runuser", "-u", owner, "--"]
        self.run.on_close(lambda: self.stop("immediate"))
        data = os.path.join(self.dir, "data")
        initdb = self.as_owner + [
            self._bin("initdb"),
            "-D",
            data,
            "-A",
            "trust",
            "-U",
            "bench",
            "-E",
            "UTF8",
            "--no-sync",
        ]
        if not self._ok(initdb, "initdb.log"):
            return f"initdb failed: {error_line(self._at('initdb.log'))}"
        port = free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {self.dir}"
        pg_ctl = self.as_owner + [
            self._bin("pg_ctl"),
            "-D",
            data,
            "-l",
            self._at("server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        ]
        if not self._ok(pg_ctl, "pg_ctl.log"):
            return f"the server did not start: {error_line(self._at('server.log'))}"
        if not self._ok(
            [self._bin("createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "bench", "bulkhead"],
            "createdb.log",
        ):
            return f"createdb failed: {error_line(self._at('createdb.log'))}"
        out = subprocess.run([self._bin("postgres"), "--version"], capture_output=True, text=True)
        self.version = out.stdout.strip().replace("postgres (PostgreSQL) ", "PostgreSQL ", 1)
        self.tf_conn = f"postgres://bench@127.0.0.1:{port}/postgres?sslmode=disable"
        self.storage = f"postgres://bench@127.0.0.1:{port}/bulkhead"
        return None

    def stop(self, mode="fast"):
        if self.dir and os.path.exists(os.path.join(self.dir, "data", "postmaster.pid")):
            subprocess.run(
                self.as_owner
                + [
                    self._bin("pg_ctl"),
                    "-D",
                    os.path.join(self.dir, "data"),
                    "-m",
                    mode,
                    "-w",
                    "stop",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def _bin(self, name):
        return os.path.join(self.pg_bin, name)

    def _at(self, name):
        return os.path.join(self.dir, name)

    def _ok(self, argv, logname):
        with open(self._at(logname), "wb") as out:
            return subprocess.run(argv, stdout=out, stderr=out).returncode == 0


def _user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


NGINX_CONF = """worker_processes 2;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log {dir}/access.log;
  client_body_temp_path {dir}/tmp/body;
  proxy_temp_path {dir}/tmp/proxy;
  fastcgi_temp_path {dir}/tmp/fastcgi;
  uwsgi_temp_path {dir}/tmp/uwsgi;
  scgi_temp_path {dir}/tmp/scgi;
  default_type application/json;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 65;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port};
    root {www};
  }}
}}
"""


def nginx(run, binary, www, name):
    """nginx (two workers, its access log kept, as bulkhead keeps its request log) serving
    the directory WWW; returns its URL once it serves WWW/NAME byte for byte."""
    d = run.path("nginx")
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    # The workers run as nobody when the bench runs as root: they must reach the file.
    os.chmod(run.work, 0o755)
    os.chmod(www, 0o755)
    os.chmod(os.path.join(www, name), 0o644)
    port = free_port()
    with open(os.path.join(d, "nginx.conf"), "w") as f:
        f.write(NGINX_CONF.format(dir=d, port=port, www=www))
    run.start(
        [
            binary,
            "-p",
            d + "/",
            "-e",
            os.path.join(d, "error.log"),
            "-c",
            os.path.join(d, "nginx.conf"),
        ],
        os.path.join(d, "stdout"),
    )
    url = f"http://127.0.0.1:{port}"
    with open(os.path.join(www, name), "rb") as f:
        want = f.read()
    got = None
    for _ in range(100):
        try:
            status, body = http("GET", f"{url}/{name}")
            got = body if status == 200 else None
        except OSError:
            got = None
        if got is not None:
            break
        time.sleep(0.05)
    if got != want:
        said = []
        for p in ("error.log", "stdout"):
            try:
                with open(os.path.join(d, p), errors="replace") as f:
                    said += f.read().splitlines()
            except OSError:
                pass
        raise Fatal(f"nginx does not serve the state: {' '.join(said[:3])}")
    return url
