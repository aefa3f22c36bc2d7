"""A stand-in for an OpenAI-compatible model server with a known shape: every chat completion takes `latency`
seconds, at most `capacity` are served at once, and the rest queue (like vLLM's max_num_seqs) or, with
`--reject-over-capacity`, get 429 with Retry-After (like a rate-limited hosted API). Its ideal throughput is
capacity / latency, which is what the streaming window is measured against (bench/llm_window.py) and tested with.

    python -m persona_hub_dagster_tests.helpers.openai_stub_server --port 8011 --latency 0.5 --capacity 256

Plain asyncio HTTP/1.1 with keep-alive, so the server itself costs little CPU per request. GET /stats tells what it
saw: requests served, being served now, the most served at once, 429s sent. A request whose last user message contains
`{"answer": ...}`-style JSON is answered with that JSON; any other gets `--answer` (default: a small JSON object).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time


class Stub:
    def __init__(self, latency: float, capacity: int, reject_over_capacity: bool, answer: str):
        self.latency = latency
        self.capacity = capacity
        self.reject_over_capacity = reject_over_capacity
        self.answer = answer
        self.slots = asyncio.Semaphore(capacity)
        self.serving = 0
        self.stats = {"requests": 0, "serving": 0, "max_serving": 0, "rejected": 0, "started": time.time()}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                status, payload, extra = await self.route(method, path, body)
                data = json.dumps(payload).encode()
                header = (
                    f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
                    + "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                    + "\r\n"
                )
                writer.write(header.encode() + data)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def route(self, method: str, path: str, body: bytes) -> tuple[str, dict, dict]:
        if method == "GET" and path.endswith("/models"):
            return "200 OK", {"object": "list", "data": [{"id": "stub", "object": "model", "owned_by": "test"}]}, {}
        if method == "GET" and path.endswith("/stats"):
            return "200 OK", self.stats, {}
        if method != "POST" or not path.endswith("/chat/completions"):
            return "404 Not Found", {"error": {"message": f"no route {method} {path}"}}, {}
        if self.reject_over_capacity and self.serving >= self.capacity:
            self.stats["rejected"] += 1
            return "429 Too Many Requests", {"error": {"message": "rate limited"}}, {"retry-after": "0.2"}
        request = json.loads(body)
        async with self.slots:
            self.serving += 1
            self.stats["serving"] = self.serving
            self.stats["max_serving"] = max(self.stats["max_serving"], self.serving)
            try:
                await asyncio.sleep(self.latency)
            finally:
                self.serving -= 1
                self.stats["serving"] = self.serving
        self.stats["requests"] += 1
        return "200 OK", completion(request, self.answer), {}


def completion(request: dict, answer: str) -> dict:
    prompt = request["messages"][-1]["content"]
    return {
        "id": "stub",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.get("model", "stub"),
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
        "usage": {"prompt_tokens": max(1, len(prompt) // 4), "completion_tokens": 8, "total_tokens": 8},
    }


async def serve(port: int, stub: Stub) -> None:
    server = await asyncio.start_server(stub.handle, "127.0.0.1", port, backlog=4096)
    print(f"ready on 127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--capacity", type=int, default=256)
    parser.add_argument("--reject-over-capacity", action="store_true")
    parser.add_argument("--answer", default='{"answer": "ok"}')
    args = parser.parse_args()
    stub = Stub(args.latency, args.capacity, args.reject_over_capacity, args.answer)
    try:
        import uvloop  # noqa: F401  (faster where installed; plain asyncio otherwise)

        uvloop.run(serve(args.port, stub))
    except ImportError:
        asyncio.run(serve(args.port, stub))


if __name__ == "__main__":
    main()
