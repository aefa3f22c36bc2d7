"""Append N cache entries to one namespace from a separate process (concurrent-writer test).

Usage: python cache_writer.py ROOT NAMESPACE PREFIX N
"""

import sys

from persona_hub_dagster.lib.llm.cache import ResponseCache
from persona_hub_dagster.lib.llm.types import Completion
from persona_hub_dagster.lib.storage import DeltaStore

root, namespace, prefix, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cache = ResponseCache(DeltaStore(root=root), namespace)
for i in range(n):
    cache.put({f"{prefix}-{i}": Completion(f"answer {prefix} {i}", "stop", 3, 2, 0.1)}, backend="test", model="m")
