"""Batched decoding on the embedded model, measured: several sequences in one llama_decode per step against today's
one-request-at-a-time path (with its prompt-prefix reuse), in one process.

    .venv/bin/python bench/llm_batched_decode.py B N MAX_TOKENS THREADS
    .venv/bin/python bench/llm_batched_decode.py 8 16 0 1      # T2P prompts (sample corpus), 1 thread
    .venv/bin/python bench/llm_batched_decode.py 8 16 128 2    # short prompts, 128 tokens out, 2 threads

A prototype over llama-cpp-python's low-level API and its private `_internals` (pinned version): one context with
n_seq_max = B and a unified KV cache, a sampler chain per sequence (the JSON grammar, top-p, temperature, seed), the
prompts' common prefix decoded once and copied to every sequence (llama_memory_seq_cp), then one token per live
sequence per decode. Results in bench/RESULTS.md (it does not pay on 2 cores for SmolLM2-135M; not wired into the
backend).
"""

import json
import sys
import time

import llama_cpp
import polars as pl
from llama_cpp import _internals, llama_chat_format
from llama_cpp.llama_grammar import LlamaGrammar

from persona_hub_dagster.lib.llm import LLMRequest
from persona_hub_dagster.lib.llm.backends.llama_cpp import LlamaCppBackend, grammar_schema
from persona_hub_dagster.lib.llm.structured import parse_structured
from persona_hub_dagster.lib.personas import text_to_persona

B = int(sys.argv[1]) if len(sys.argv) > 1 else 8
N = int(sys.argv[2]) if len(sys.argv) > 2 else 16

texts = pl.read_ndjson("persona_hub_dagster/data/sample_corpus.jsonl").head(N)
texts = texts.with_columns(text_id=pl.Series([f"t{i}" for i in range(texts.height)]))
settings = text_to_persona.TextToPersonaSettings(relations_per_text=1, max_tokens=48)
requests = [p.request for p in text_to_persona.plan(texts, settings)]
if len(sys.argv) > 3 and int(sys.argv[3]) > 0:  # decode-bound: short prompts, long answers
    from persona_hub_dagster.lib.llm import SamplingParams

    requests = [
        LLMRequest.chat(
            f"Write a short story about a {w} who finds a key.",
            sampling=SamplingParams(temperature=0.7, max_tokens=int(sys.argv[3]), seed=i),
        )
        for i, w in enumerate(["baker", "pilot", "nurse", "welder", "poet", "farmer", "judge", "miner"] * 4)
    ][:N]

THREADS = int(sys.argv[4]) if len(sys.argv) > 4 else 1
backend = LlamaCppBackend(None, n_ctx=4096, n_threads=THREADS)
llm = backend._llm
t = time.perf_counter()
base = backend.complete(requests)
base_s = time.perf_counter() - t
base_tok = sum(c.completion_tokens for c in base)
print("one-by-one", len(requests), "req", round(base_s, 1), "s", round(base_tok / base_s, 1), "tok/s", flush=True)

eos_id, bos_id = llm.token_eos(), llm.token_bos()
formatter = llama_chat_format.Jinja2ChatFormatter(
    template=llm.metadata["tokenizer.chat_template"],
    eos_token=llm._model.token_get_text(eos_id),
    bos_token=llm._model.token_get_text(bos_id),
    stop_token_ids=[eos_id],
)

per_seq = 2048
cparams = llama_cpp.llama_context_default_params()
cparams.n_ctx = per_seq * B
cparams.n_batch = 2048
cparams.n_ubatch = 512
cparams.n_seq_max = B
cparams.kv_unified = True
cparams.n_threads = THREADS
cparams.n_threads_batch = THREADS
ctx = _internals.LlamaContext(model=llm._model, params=cparams, verbose=False)
mem = llama_cpp.llama_get_memory(ctx.ctx)
vocab = llm._model.vocab


def sampler_for(request: LLMRequest):
    s = _internals.LlamaSampler()
    if request.json_schema is not None:
        grammar = LlamaGrammar.from_json_schema(json.dumps(grammar_schema(request.json_schema)), verbose=False)
        s.add_grammar(llm._model, grammar)
    sp = request.sampling
    if sp.temperature <= 0:
        s.add_greedy()
    else:
        s.add_top_p(sp.top_p, 1)
        s.add_temp(sp.temperature)
        s.add_dist(sp.seed if sp.seed is not None else 0)
    return s


def prefill(batch, tokens):
    """Decode (sequence id, token, position) triples in chunks of n_batch, keeping no logits (prompt tokens)."""
    for start in range(0, len(tokens), cparams.n_batch):
        chunk = tokens[start : start + cparams.n_batch]
        batch.reset()
        b = batch.batch
        for j, (seq_id, tok, pos) in enumerate(chunk):
            b.token[j] = tok
            b.pos[j] = pos
            b.seq_id[j][0] = seq_id
            b.n_seq_id[j] = 1
            b.logits[j] = False
        b.n_tokens = len(chunk)
        ctx.decode(batch)


def run_batch(reqs):
    batch = _internals.LlamaBatch(n_tokens=cparams.n_batch, embd=0, n_seq_max=B, verbose=False)
    seqs = []
    for i, r in enumerate(reqs):
        out = formatter(messages=[dict(m) for m in r.messages])
        toks = llm.tokenize(out.prompt.encode(), add_bos=not out.added_special, special=True)
        seqs.append(
            {
                "id": i,
                "prompt": toks,
                "n_past": 0,
                "out": [],
                "s": sampler_for(r),
                "done": False,
                "max": r.sampling.max_tokens,
                "idx": -1,
            }
        )
    # the prompts' common prefix once, in sequence 0, copied to the others; then each suffix but its last token
    prefix = 0
    first = seqs[0]["prompt"]
    while prefix < min(len(x["prompt"]) for x in seqs) - 1 and all(x["prompt"][prefix] == first[prefix] for x in seqs):
        prefix += 1
    prefill(batch, [(0, tok, pos) for pos, tok in enumerate(first[:prefix])])
    for x in seqs[1:]:
        llama_cpp.llama_memory_seq_cp(mem, 0, x["id"], 0, prefix)
    prefill(batch, [(s["id"], tok, pos) for s in seqs for pos, tok in enumerate(s["prompt"][:-1]) if pos >= prefix])
    batch.reset()
    b = batch.batch
    for j, s in enumerate(seqs):
        b.token[j] = s["prompt"][-1]
        b.pos[j] = len(s["prompt"]) - 1
        b.seq_id[j][0] = s["id"]
        b.n_seq_id[j] = 1
        b.logits[j] = True
        s["idx"] = j
    b.n_tokens = len(seqs)
    ctx.decode(batch)
    for s in seqs:
        s["n_past"] = len(s["prompt"])
    # decode loop
    while True:
        active = [s for s in seqs if not s["done"]]
        if not active:
            break
        batch.reset()
        b = batch.batch
        n = 0
        for s in active:
            tok = llama_cpp.llama_sampler_sample(s["s"].sampler, ctx.ctx, s["idx"])
            if llama_cpp.llama_vocab_is_eog(vocab, tok) or len(s["out"]) >= s["max"]:
                s["done"] = True
                llama_cpp.llama_memory_seq_rm(mem, s["id"], -1, -1)
                continue
            s["out"].append(tok)
            b.token[n] = tok
            b.pos[n] = s["n_past"]
            b.seq_id[n][0] = s["id"]
            b.n_seq_id[n] = 1
            b.logits[n] = True
            s["idx"] = n
            s["n_past"] += 1
            n += 1
        if n == 0:
            break
        b.n_tokens = n
        ctx.decode(batch)
    return [llm.detokenize(s["out"]).decode("utf-8", "ignore") for s in seqs], [len(s["out"]) for s in seqs]


t = time.perf_counter()
texts_out, ntoks = [], []
for i in range(0, len(requests), B):
    a, c = run_batch(requests[i : i + B])
    texts_out += a
    ntoks += c
bs = time.perf_counter() - t
print(
    "batched",
    B,
    len(requests),
    "req",
    round(bs, 1),
    "s",
    round(sum(ntoks) / bs, 1),
    "tok/s",
    "ratio",
    round((sum(ntoks) / bs) / (base_tok / base_s), 2),
)
ok_base = (
    0
    if requests[0].json_schema is None
    else sum(
        parse_structured(c.text, r.json_schema, c.finish_reason)[1] is None for c, r in zip(base, requests, strict=True)
    )
)
ok_b = (
    0
    if requests[0].json_schema is None
    else sum(parse_structured(t, r.json_schema, "stop")[1] is None for t, r in zip(texts_out, requests, strict=True))
)
if requests[0].json_schema is not None:
    print("valid", ok_base, ok_b, "of", len(requests))
print(texts_out[:3])
