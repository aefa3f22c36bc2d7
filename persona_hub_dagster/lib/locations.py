"""Where things live by default, and the environment variables that move them.

Every default is relative to the project checkout (the folder holding pyproject.toml) when the package runs from
one, else to the current directory, so `make demo` in a clone and a container with the package installed both
land somewhere predictable.
"""

from __future__ import annotations

import os
from pathlib import Path

STORAGE_ENV = "PERSONA_HUB_STORAGE"
SOURCE_ENV = "PERSONA_HUB_SOURCE"
PERSONAS_FOLDER_ENV = "PERSONA_HUB_PERSONAS_FOLDER"


def project_dir() -> Path:
    package_parent = Path(__file__).resolve().parents[2]
    if (package_parent / "pyproject.toml").is_file():
        return package_parent
    return Path.cwd()


def is_uri(location: str) -> bool:
    """True for object-store URIs (s3://bucket/prefix), false for local paths."""
    return "://" in location and not location.startswith("file://")


def normalize_location(location: str) -> str:
    """Object-store URIs stay as they are (minus a trailing slash); local paths become absolute."""
    location = location.strip()
    if is_uri(location):
        return location.rstrip("/")
    if location.startswith("file://"):
        location = location[len("file://") :]
    return str(Path(location).expanduser().resolve())


def default_storage_root() -> str:
    """`$PERSONA_HUB_STORAGE`, else `.persona_hub/delta` in the project folder."""
    return normalize_location(os.environ.get(STORAGE_ENV) or str(project_dir() / ".persona_hub" / "delta"))


def default_source_location() -> str:
    """`$PERSONA_HUB_SOURCE`, else `corpus/` in the project folder: the place the shard sensor watches."""
    return normalize_location(os.environ.get(SOURCE_ENV) or str(project_dir() / "corpus"))


def join_location(root: str, *parts: str) -> str:
    """`root/part/part` for local paths and URIs alike."""
    parts = tuple(p.strip("/") for p in parts if p)
    if is_uri(root):
        return "/".join((root.rstrip("/"), *parts))
    return str(Path(root, *parts))
