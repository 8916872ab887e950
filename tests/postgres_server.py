"""A throwaway PostgreSQL server for tests: Debian's `postgresql` package (installed by `make postgres`),
a fresh cluster in a temporary directory, listening on 127.0.0.1 only (no Unix socket), password
authentication, stopped and deleted on exit. Missing binaries fail the test with the reason: never a skip.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _bin_dir() -> Path:
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for folder in candidates:
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) not found: run `make postgres` (Debian's postgresql)")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def postgres_server(password: str) -> Iterator[str]:
    """Yield a SQLAlchemy URL (user postgres, this password) of a server that lives for the block."""
    binaries = _bin_dir()
    as_postgres: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="tunelab-pg-"))
    if os.geteuid() == 0:  # initdb refuses to run as root: the package's own user runs the server
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root and there is no 'postgres' user: install Debian's postgresql package")
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_postgres = ["runuser", "-u", "postgres", "--"]
    password_file, data, log = folder / "password", folder / "data", folder / "server.log"
    password_file.write_text(password)
    if as_postgres:
        os.chown(password_file, owner.pw_uid, owner.pw_gid)
    port = _free_port()

    def run(*command: str) -> None:
        done = subprocess.run([*as_postgres, *command], capture_output=True, text=True, timeout=120)
        if done.returncode:
            server_log = log.read_text()[-1500:] if log.exists() else ""
            raise RuntimeError(f"{command[0]} failed: {done.stderr[-1500:]}{server_log}")

    try:
        run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256",
            f"--pwfile={password_file}", "-E", "UTF8", "--no-sync")
        password_file.unlink()
        run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start", "-o",
            f"-h 127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off -c max_connections=50")
        yield f"postgresql+psycopg2://postgres:{password}@127.0.0.1:{port}/postgres"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_postgres, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                            "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
