"""A process that starts a managed llama.cpp server, prints its pid, and waits to be interrupted or killed.

Usage: python managed_server_child.py MODEL_PATH
"""

import sys
import time

from persona_hub_dagster.lib.llm.backends.managed_server import ManagedServer, free_port, llama_cpp_server_command

port = free_port()
with ManagedServer(
    llama_cpp_server_command(sys.argv[1], port=port, n_ctx=512),
    port=port,
    health_path="/v1/models",
    startup_timeout_s=120,
) as server:
    print(server.pid, flush=True)
    while True:
        time.sleep(0.2)
