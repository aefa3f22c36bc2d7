"""A small local HTTP server that answers as an OpenAI-compatible model server would, or fails as scripted: 429
(with Retry-After), 500, slowly, with malformed JSON, or with truncated output, and records what it was sent.
In-process (a thread), so it starts in milliseconds: not one of the `servers` tests' real servers."""

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FaultServer:
    """Answers each POST with the next scripted behaviour (then "ok" forever)."""

    def __init__(self, *behaviours):
        self.script = deque(behaviours)
        self.requests: list[dict] = []  # time, headers, body
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append(
                        {
                            "t": time.monotonic(),
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                        }
                    )
                    behaviour = server.script.popleft() if server.script else ("ok",)
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server.respond(self, behaviour, body)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/v1"

    def respond(self, handler, behaviour, body):
        kind = behaviour[0]
        if kind == "status":
            status, headers = behaviour[1], behaviour[2] if len(behaviour) > 2 else {}
            self._send(handler, status, {"error": {"message": f"scripted {status}"}}, headers)
        elif kind == "sleep":
            time.sleep(behaviour[1])
            self._send(handler, 200, completion("late"))
        elif kind == "malformed":
            payload = b'{"id": "x", "choices": [ {"message": '  # cut off mid-document
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            handler.wfile.write(payload)
        elif kind == "content":
            self._send(handler, 200, completion(behaviour[1], behaviour[2] if len(behaviour) > 2 else "stop"))
        else:
            delay = behaviour[1] if len(behaviour) > 1 else 0
            time.sleep(delay)
            self._send(handler, 200, completion(json.dumps({"persona": "a reader"})))

    @staticmethod
    def _send(handler, status, payload, headers=None):
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(content: str, finish_reason: str = "stop") -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 0,
        "model": "scripted",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


def run_text_to_persona(store, instance, server, relation: str = "read", token_budget: int | None = None):
    """Materialize text_to_persona for the instance's one shard (raw_text already written) against `server`."""
    import dagster as dg

    from persona_hub_dagster.defs.models import LLMResource
    from persona_hub_dagster.defs.partitions import text_shards
    from persona_hub_dagster.defs.personas.assets import text_to_persona_asset
    from persona_hub_dagster.defs.storage import DeltaIOManager, DeltaStorageResource

    (shard,) = instance.get_dynamic_partitions(text_shards.name)
    storage = DeltaStorageResource(root=store.root)
    return dg.materialize(
        [text_to_persona_asset, dg.AssetSpec("raw_text", partitions_def=text_shards)],
        selection=[text_to_persona_asset],
        partition_key=shard,
        instance=instance,
        resources={
            "storage": storage,
            "io_manager": DeltaIOManager(storage=storage),
            "llm": LLMResource(
                backend="openai", base_url=server.base_url, model="scripted", max_retries=1, token_budget=token_budget
            ),
        },
        run_config={"ops": {"text_to_persona": {"config": {"relations": [relation], "batch_size": 2}}}},
        raise_on_error=False,
    )
