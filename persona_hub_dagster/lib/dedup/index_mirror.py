"""The hub index on object storage. RocksDB needs a local disk, so with an `s3://` root the index is worked on in a
local cache folder and mirrored under the root: opening fetches the files the cache lacks (none when the cache
persists between runs), `publish` uploads the files a shard created (its segment, RocksDB's new SST files) and the
manifest last. `ObjectStoreMirror` is that part of `HubIndex` (a base class: it reads the index's folder and
manifest)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.fs as pafs

from persona_hub_dagster.lib import filesystems

# Files that never change once written (unique names): the mirror sends them once. The others (the manifests,
# RocksDB's CURRENT, MANIFEST-*, OPTIONS-*, its write-ahead log) are small and sent whenever the index is published.
_IMMUTABLE_SUFFIXES = (".sst", ".f32", ".npz", ".npy")


class ObjectStoreMirror:
    folder: Path
    mirror: str | None
    _remote: dict[str, int]

    def close(self) -> None: ...

    def _save(self) -> None: ...

    def publish(self) -> dict[str, int]:
        """Mirror the local folder to the object store: new and changed files first, the manifest last, then the
        files the index no longer has. Returns {"uploaded": files, "uploaded_bytes": ..., "deleted": files}."""
        if not self.mirror:
            return {"uploaded": 0, "uploaded_bytes": 0, "deleted": 0}
        self.close()  # RocksDB's files are a consistent set only when it is closed
        self._save()
        fs, base = filesystems.resolve(self.mirror)
        local = self._local_files()
        uploaded = uploaded_bytes = 0
        for name, size in sorted(local.items()):
            if name == "manifest.json":
                continue
            if self._remote.get(name) == size and name.endswith(_IMMUTABLE_SUFFIXES):
                continue
            _upload(fs, self.folder / name, f"{base}/{name}")
            uploaded, uploaded_bytes = uploaded + 1, uploaded_bytes + size
            self._remote[name] = size
        _upload(fs, self.folder / "manifest.json", f"{base}/manifest.json")
        self._remote["manifest.json"] = local["manifest.json"]
        gone = [name for name in self._remote if name not in local]
        for name in gone:
            fs.delete_file(f"{base}/{name}")
            del self._remote[name]
        return {"uploaded": uploaded + 1, "uploaded_bytes": uploaded_bytes, "deleted": len(gone)}

    def _local_files(self) -> dict[str, int]:
        found = {}
        for path in self.folder.rglob("*"):
            if path.is_file() and not path.name.startswith(("LOG", "LOCK")) and not path.name.endswith(".tmp"):
                found[path.relative_to(self.folder).as_posix()] = path.stat().st_size
        return found

    def _fetch(self) -> None:
        """Make the cache folder equal to the mirror: fetch what it lacks, delete what the mirror does not have."""
        fs, base = filesystems.resolve(self.mirror)
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        self._remote = {
            info.path[len(base) :].lstrip("/"): int(info.size or 0)
            for info in fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        }
        local = self._local_files()
        for name, size in self._remote.items():
            if local.get(name) != size or not name.endswith(_IMMUTABLE_SUFFIXES):
                target = self.folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with fs.open_input_stream(f"{base}/{name}") as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
        for name in local:
            if name not in self._remote:
                (self.folder / name).unlink()


def _upload(fs: pafs.FileSystem, source: Path, target: str) -> None:
    with open(source, "rb") as data, fs.open_output_stream(target) as out:
        shutil.copyfileobj(data, out, 1 << 20)
