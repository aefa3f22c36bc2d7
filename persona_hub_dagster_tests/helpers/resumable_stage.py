"""A stage-shaped process for the crash-resume test: N requests to the embedded model, in batches through the
response cache, then one partition write of the results. Prints the usage as JSON when it finishes.

Usage: python resumable_stage.py ROOT N BATCH_SIZE [BASE_URL]
(the embedded model; with BASE_URL, an OpenAI-compatible server through the streaming window)
"""

import json
import sys
import uuid

import polars as pl

from persona_hub_dagster.lib.llm import LLMClient, LLMRequest, LLMSettings, ResponseCache, SamplingParams, open_backend
from persona_hub_dagster.lib.storage import DeltaStore

root, n, batch_size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
base_url = sys.argv[4] if len(sys.argv) > 4 else None
settings = LLMSettings(backend="openai", base_url=base_url, max_in_flight=4) if base_url else LLMSettings(n_ctx=512)
store = DeltaStore(root=root)
requests = [
    LLMRequest.chat(
        f"Name one kind of person who would read about topic number {i}.",
        sampling=SamplingParams(max_tokens=12, seed=i),
        request_id=f"item-{i}",
    )
    for i in range(n)
]
with open_backend(settings) as backend:
    client = LLMClient(backend, cache=ResponseCache(store, "resume-test.s1", run_id=str(uuid.uuid4())))
    rows = []
    for responses in client.generate_batches(requests, batch_size):
        rows += [{"shard": "s1", "item_id": r.request_id, "text": r.text, "ok": r.ok} for r in responses]
    store.write_partitions("resume_output", pl.DataFrame(rows), partitions=["s1"])
print(json.dumps({"cache_hits": client.usage.cache_hits, "calls": client.usage.calls}), flush=True)
