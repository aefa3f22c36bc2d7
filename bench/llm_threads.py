"""Threads of the embedded model on an idle and on a loaded machine: Text-to-Persona prompts of the sample corpus
through the llama_cpp backend with 1 thread, 2 threads and the adaptive default (the cores idle when the backend
opens), each measured with the machine idle and with one core taken by another process (a busy loop).

    .venv/bin/python bench/llm_threads.py [N_REQUESTS]

Each configuration runs in a fresh subprocess (a fresh model and KV cache), in interleaved rounds; reported:
completion tokens per second of the whole batch (prefill included) and the thread count the adaptive default chose.
Run it on an otherwise quiet machine: "idle" means idle.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 12

WORKER = r"""
import json, sys, time
import polars as pl
from persona_hub_dagster.lib.llm.backends.llama_cpp import LlamaCppBackend
from persona_hub_dagster.lib.personas import text_to_persona

threads = None if sys.argv[1] == "adaptive" else int(sys.argv[1])
texts = pl.read_ndjson("persona_hub_dagster/data/sample_corpus.jsonl").head(int(sys.argv[2]))
texts = texts.with_columns(text_id=pl.Series([f"t{i}" for i in range(texts.height)]))
settings = text_to_persona.TextToPersonaSettings(relations_per_text=1, max_tokens=48)
requests = [p.request for p in text_to_persona.plan(texts, settings)]
backend = LlamaCppBackend(n_threads=threads)
backend.complete(requests[:1])  # load and warm up
started = time.perf_counter()
completions = backend.complete(requests[1:])
seconds = time.perf_counter() - started
tokens = sum(c.completion_tokens for c in completions)
print(json.dumps({"threads": backend.n_threads, "tokens_s": tokens / seconds, "seconds": seconds}))
"""


def spin(stop) -> None:
    while not stop.is_set():
        pass


def run(threads: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", WORKER, threads, str(N + 1)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    results: dict[tuple[str, str], list[dict]] = {}
    for _round in range(2):
        for machine in ("idle", "loaded"):
            stop = multiprocessing.Event()
            hog = multiprocessing.Process(target=spin, args=(stop,)) if machine == "loaded" else None
            if hog:
                hog.start()
                time.sleep(1.0)  # the load is there before the stage starts, as another run's would be
            try:
                for threads in ("1", "2", "adaptive"):
                    results.setdefault((machine, threads), []).append(run(threads))
            finally:
                if hog:
                    stop.set()
                    hog.join()
    print(f"{N} Text-to-Persona requests (max_tokens 48), SmolLM2-135M Q4_1, best of 2 rounds\n")
    print("| machine | threads | chosen | tokens/s | vs 1 thread |")
    print("|---|---|---:|---:|---:|")
    for machine in ("idle", "loaded"):
        base = max(r["tokens_s"] for r in results[(machine, "1")])
        for threads in ("1", "2", "adaptive"):
            best = max(results[(machine, threads)], key=lambda r: r["tokens_s"])
            chosen = ",".join(sorted({str(r["threads"]) for r in results[(machine, threads)]}))
            print(f"| {machine} | {threads} | {chosen} | {best['tokens_s']:.1f} | {best['tokens_s'] / base:.2f}x |")


if __name__ == "__main__":
    main()
