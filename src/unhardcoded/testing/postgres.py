"""A private PostgreSQL server on loopback, for the tests and benchmarks of the PostgreSQL
trace store.

``UNHARDCODED_TEST_POSTGRES_DSN`` names a server to use instead (its user must be able to
create databases). Otherwise a new cluster is made with the machine's ``initdb`` (Debian's
``postgresql`` package; ``.ci/run`` installs it) in a temporary folder and served by ``postgres``
on a free loopback port, then stopped and removed by ``stop()``. As root, it runs as the
``postgres`` user (PostgreSQL refuses to run as root). Durability is off (``fsync=off``): it is a
scratch server. Where none can be had, ``Unavailable`` says why.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid


def _binaries() -> str | None:
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(os.path.realpath(found))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return os.path.dirname(versions[-1]) if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Unavailable(RuntimeError):
    """No PostgreSQL server can be had here; the message says why."""


class PostgresServer:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.root: str | None = None
        self.pid: int | None = None  # the postmaster's, where this started it
        self.admin_dsn = os.environ.get("UNHARDCODED_TEST_POSTGRES_DSN", "")
        if not self.admin_dsn:
            self._start()

    def _unavailable(self, why: str) -> None:
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
        raise Unavailable(why)

    def _start(self) -> None:
        bindir = _binaries()
        if bindir is None:
            self._unavailable("initdb is not installed (Debian: apt-get install postgresql)")
        as_user: list[str] = []
        self.root = tempfile.mkdtemp(prefix="unhardcoded-pg-")
        os.chmod(self.root, 0o755)
        if os.geteuid() == 0:
            try:
                import pwd
                pw = pwd.getpwnam("postgres")
            except KeyError:
                self._unavailable("running as root and there is no postgres user to run the server as")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            as_user = ["runuser", "-u", "postgres", "--"]
        data = os.path.join(self.root, "data")
        init = subprocess.run([*as_user, f"{bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust",
                               "-E", "UTF8", "--no-sync"], capture_output=True, text=True)
        if init.returncode != 0:
            self._unavailable(f"initdb failed: {init.stderr.strip()[-400:]}")
        port = _free_port()
        self.log = os.path.join(self.root, "server.log")
        with open(self.log, "w") as log:
            if as_user:
                os.chown(self.log, os.stat(self.root).st_uid, os.stat(self.root).st_gid)
            self.proc = subprocess.Popen(
                [*as_user, f"{bindir}/postgres", "-D", data, "-p", str(port), "-k", self.root,
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=200"],
                stdout=log, stderr=subprocess.STDOUT)
        self.admin_dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        import psycopg
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(self.admin_dsn, connect_timeout=2).close()
                self.pid = self._postmaster(data)
                return
            except psycopg.OperationalError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.pid = None
                    with open(self.log) as f:
                        tail = f.read()[-400:]
                    self.stop()
                    self._unavailable(f"the server did not start: {tail}")
                time.sleep(0.1)

    @staticmethod
    def _postmaster(data: str) -> int | None:
        try:
            with open(os.path.join(data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def cpu_seconds(self) -> float:
        """CPU time the server's processes (the postmaster and its children: backends, writers)
        have used so far; 0 where this did not start it."""
        if self.pid is None:
            return 0.0
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            pid, ppid = int(entry), int(fields[1])
            if pid == self.pid or ppid == self.pid:
                total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        return total

    def database(self) -> str:
        """A new empty database; its DSN."""
        import psycopg
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        params = dict(p.split("=", 1) for p in self.admin_dsn.split())
        params["dbname"] = name
        return " ".join(f"{k}={v}" for k, v in params.items())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: PostgreSQL's smart shutdown
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None
