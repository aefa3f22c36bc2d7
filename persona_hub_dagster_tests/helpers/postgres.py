"""A real PostgreSQL server for tests: Debian's `postgresql` package, a fresh cluster in a temporary folder,
listening on 127.0.0.1 only, stopped (by its own pg_ctl, i.e. our postmaster's PID) when the block exits."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from persona_hub_dagster_tests.conftest import free_port

# initdb refuses to run as root: as root, the cluster belongs to Debian's `postgres` user.
CLUSTER_USER = "postgres"


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


@dataclass(frozen=True)
class Postgres:
    host: str
    port: int
    user: str
    password: str

    def env(self, database: str) -> dict[str, str]:
        """The DAGSTER_PG_* variables infra/dagster.yaml reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": database,
        }

    def connect(self, database: str):
        import psycopg2

        return psycopg2.connect(host=self.host, port=self.port, user=self.user, password=self.password, dbname=database)

    def create_database(self, name: str) -> None:
        connection = self.connect("postgres")
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()


def _as_cluster_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", CLUSTER_USER, "--", *command]


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    binaries = postgres_bin()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it")
    folder = Path(tempfile.mkdtemp(prefix="persona-hub-pg-"))
    data, password_file = folder / "data", folder / "password"
    password = "test-" + os.urandom(8).hex()
    password_file.write_text(password)
    if os.geteuid() == 0:
        shutil.chown(folder, CLUSTER_USER)
        shutil.chown(password_file, CLUSTER_USER)
    port = free_port()
    run = {"check": True, "capture_output": True, "text": True}
    user = "dagster"
    subprocess.run(
        _as_cluster_user(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                user,
                "--pwfile",
                str(password_file),
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
            ]
        ),
        **run,
    )
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} -c fsync=off"
    pg_ctl = [str(binaries / "pg_ctl"), "-D", str(data), "-w", "-t", "60"]
    subprocess.run(_as_cluster_user([*pg_ctl, "-o", options, "-l", str(folder / "log"), "start"]), **run)
    try:
        yield Postgres("127.0.0.1", port, user, password)
    finally:
        subprocess.run(_as_cluster_user([*pg_ctl, "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
