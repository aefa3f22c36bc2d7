"""Reading (and writing) files in a local folder or an object store with one API (pyarrow.fs).

S3 settings come from the usual environment variables (AWS_REGION, AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...),
the same ones deltalake's object store reads, so one environment serves both.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow.fs as pafs

from persona_hub_dagster.lib.locations import is_uri, normalize_location


@dataclass(frozen=True)
class FileEntry:
    uri: str  # absolute path or full URI
    relative_path: str  # relative to the listed location, with "/" separators
    size_bytes: int
    modified_at: datetime | None


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `location` and the path within it."""
    location = normalize_location(location)
    if is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), location


def uri_for(location: str, path_in_fs: str) -> str:
    """Turn a path inside the filesystem of `location` back into a URI of the same scheme."""
    if is_uri(location):
        scheme = location.split("://", 1)[0]
        return f"{scheme}://{path_in_fs}"
    return path_in_fs


def list_files(location: str) -> list[FileEntry]:
    """Every regular file under `location`, recursively, sorted by relative path. Missing location: empty list."""
    fs, base = resolve(location)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type == pafs.FileType.File:
        return [_entry(location, info, info.base_name)]
    entries = []
    for item in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if item.type != pafs.FileType.File:
            continue
        relative = item.path[len(base) :].lstrip("/")
        entries.append(_entry(location, item, relative))
    return sorted(entries, key=lambda e: e.relative_path)


def stat(uri: str) -> FileEntry:
    """Size and modification time of one file; FileNotFoundError when it is not there."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{uri}: no such file")
    return _entry(uri, info, info.base_name)


def open_binary(uri: str, compression: str | None = None, buffer_size: int = 1 << 20) -> io.BufferedReader:
    """A buffered binary stream over the file, decompressed on the fly ('gzip', 'zstd', 'bz2' or None)."""
    fs, path = resolve(uri)
    return io.BufferedReader(fs.open_input_stream(path, compression=compression), buffer_size=buffer_size)


def write_bytes(uri: str, data: bytes) -> str:
    """Write a whole file (replacing it), creating local folders as needed; returns the normalized location."""
    location = normalize_location(uri)
    fs, path = resolve(location)
    if not is_uri(location):
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(data)
    return location


def read_bytes(uri: str) -> bytes:
    """A whole file; FileNotFoundError when it is not there."""
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def is_file(location: str) -> bool:
    fs, path = resolve(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def create_exclusive(uri: str, data: bytes) -> bool:
    """Create the file only if nothing is there, atomically (O_EXCL locally, a conditional put on S3): false when
    something was. Two processes racing for the same name: exactly one gets true."""
    location = normalize_location(uri)
    if not is_uri(location):
        try:
            descriptor = os.open(location, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except FileNotFoundError:  # its folder is missing (a file where a folder should be is ENOTDIR instead)
            os.makedirs(os.path.dirname(location), exist_ok=True)
            return create_exclusive(location, data)
        try:
            with os.fdopen(descriptor, "wb") as stream:
                stream.write(data)
        except BaseException:  # a full disk: no empty file left behind to claim the name
            os.unlink(location)
            raise
        return True
    if not location.startswith("s3://"):
        raise OSError(f"{location}: creating a file only if absent is supported on local paths and s3:// only")
    # pyarrow cannot send If-None-Match; boto3 (a dependency of dagster-aws) reads the same AWS_* environment.
    import boto3
    import botocore.exceptions

    bucket, _, key = location[len("s3://") :].partition("/")
    try:
        boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except botocore.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise OSError(f"{location}: {exc}") from exc
    except botocore.exceptions.BotoCoreError as exc:  # no credentials, no endpoint: an I/O failure like pyarrow's
        raise OSError(f"{location}: {exc}") from exc
    return True


def copy_file(source: str, destination: str) -> None:
    """Copy one file within one filesystem (on S3 the copy happens in the store: nothing passes through here)."""
    fs, source_path = resolve(source)
    _, destination_path = resolve(destination)
    if not is_uri(destination):
        fs.create_dir(destination_path.rsplit("/", 1)[0], recursive=True)
    fs.copy_file(source_path, destination_path)


def move_dir(source: str, destination: str) -> None:
    """Move a folder (or prefix) to a name where nothing is. Locally one atomic rename; an object store has no
    rename, so each file is copied, then deleted."""
    source, destination = normalize_location(source), normalize_location(destination)
    if not is_uri(source):
        os.rename(source, destination)
        return
    for entry in list_files(source):
        target = destination + "/" + entry.relative_path
        copy_file(entry.uri, target)
        delete_file(entry.uri)


def delete_file(uri: str) -> None:
    fs, path = resolve(uri)
    fs.delete_file(path)


def delete_dir(location: str) -> None:
    """Remove a folder (or object-store prefix) and everything under it; nothing there is fine."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def open_random_access(uri: str):
    """A seekable file (Parquet needs one)."""
    fs, path = resolve(uri)
    return fs.open_input_file(path)


def _entry(location: str, info: pafs.FileInfo, relative: str) -> FileEntry:
    modified = info.mtime
    if modified is not None and modified.tzinfo is None:
        modified = modified.replace(tzinfo=UTC)
    return FileEntry(
        uri=uri_for(location, info.path),
        relative_path=relative,
        size_bytes=int(info.size or 0),
        modified_at=modified,
    )
