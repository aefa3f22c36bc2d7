"""The Dagster instance every command works on: DAGSTER_HOME, opening the instance (its first creation serialized
across processes), marking runs failed whose process is gone, and registering shards on it."""

import contextlib
import fcntl
import os
import socket
from pathlib import Path

from persona_hub_dagster.lib.locations import project_dir
from persona_hub_dagster.lib.shards import ShardRegistry
from persona_hub_dagster.lib.storage import DeltaStore


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME as set, or `.dagster_home` in the project folder, holding the project's dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or project_dir() / ".dagster_home").resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    config, project_config = home / "dagster.yaml", project_dir() / "dagster.yaml"
    if not config.exists() and project_config.is_file():
        config.symlink_to(project_config)
    return home


# Every run a command starts carries its process and host, so that a later command can tell when it was left running
# by a process that is gone.
RUN_PID_TAG, RUN_HOST_TAG = "persona-hub/pid", "persona-hub/host"


@contextlib.contextmanager
def open_instance():
    """The Dagster instance the UI reads. Creating it (and migrating its storage) the first time is serialized
    across processes with a lock file in DAGSTER_HOME: concurrent first commands would otherwise each initialize
    the storage. Runs this command line started in a process that no longer exists are marked failed."""
    import dagster as dg

    home = Path(os.environ["DAGSTER_HOME"])
    with open(home / ".persona-hub.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            instance = dg.DagsterInstance.get()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    with instance:
        _fail_dead_runs(instance)
        yield instance


def _fail_dead_runs(instance) -> None:
    """A run killed with its process stays STARTED forever in the local instance (in production the daemon's run
    monitoring catches it): mark ours failed when the process that ran it is gone."""
    import dagster as dg

    started = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED]
    runs = instance.get_runs(
        filters=dg.RunsFilter(statuses=started, tags={RUN_HOST_TAG: socket.gethostname()}), limit=100
    )
    for run in runs:
        pid = int(run.tags.get(RUN_PID_TAG, "0"))
        if pid and pid != os.getpid() and not _alive(pid):
            instance.report_run_failed(
                run, f"The persona-hub process ({pid}) that ran this run is gone (killed?); marked failed."
            )
            print(f"note: run {run.run_id} was left running by a process that is gone; marked it failed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_tags() -> dict[str, str]:
    """The tags of a run this process starts (RUN_PID_TAG, RUN_HOST_TAG)."""
    return {RUN_PID_TAG: str(os.getpid()), RUN_HOST_TAG: socket.gethostname()}


def register(shard, *, text_column: str | None = None, replace: bool = False) -> bool:
    """Register a shard in the shard registry and as a partition of the instance; True when it is new."""
    from persona_hub_dagster.defs.partitions import register_shards

    with open_instance() as instance:
        new = register_shards(
            instance,
            ShardRegistry(DeltaStore()),
            [shard],
            registered_by="persona-hub register-shard",
            text_column=text_column,
            replace=replace,
        )
    return bool(new)
