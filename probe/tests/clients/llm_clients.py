"""Real, unmodified LLM clients streaming from an Ollama-compatible server, for the probe's
passive-accounting test (probe/tests/passive.rs). Each client keeps one connection alive
for its requests. Prints one JSON line per request: the client, the local address of the
connection it went over, the tokens it received (pieces with content), the server's usage
when it came, and its time to first token (request handed to its connection -> first piece with content).

Usage: llm_clients.py BASE_URL MODEL N   (N requests for each of the four clients, after
one warm-up request each: a client's first request pays for its own lazy set-up, which is
no part of the server's time to first token; it is marked "warmup")
"""
import json
import sys
import time

import httpx
import ollama
import openai

BASE, MODEL, N = sys.argv[1], sys.argv[2], int(sys.argv[3])
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


class Addresses:
    """When each request was handed to the connection (an httpx request hook: the client's
    own set-up before it is not the server's time) and the local address of its
    response's connection (a response hook)."""

    def __init__(self):
        self.last = None
        self.sent = None

    def hooks(self):
        return {"request": [self.on_request], "response": [self.hook]}

    def on_request(self, request):
        self.sent = time.perf_counter()

    def hook(self, response):
        stream = response.extensions.get("network_stream")
        if stream is not None:
            host, port = stream.get_extra_info("client_addr")
            self.last = f"{host}:{port}"


def emit(client, i, addr, tokens, ttft_s, usage=None):
    print(
        json.dumps(
            {
                "client": client,
                "warmup": i == 0,
                "addr": addr,
                "tokens": tokens,
                "ttft_ms": None if ttft_s is None else ttft_s * 1e3,
                "usage": usage,
            }
        ),
        flush=True,
    )


def with_ollama():
    a = Addresses()
    c = ollama.Client(host=BASE, event_hooks=a.hooks())
    for i in range(N + 1):
        first, tokens = None, 0
        for part in c.chat(model=MODEL, messages=MESSAGES, stream=True):
            if part.message.content:
                tokens += 1
                if first is None:
                    first = time.perf_counter() - a.sent
        emit("ollama", i, a.last, tokens, first, part.eval_count)


def with_openai(include_usage):
    a = Addresses()
    http = httpx.Client(event_hooks=a.hooks())
    c = openai.OpenAI(base_url=f"{BASE}/v1", api_key="unused", http_client=http)
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    for i in range(N + 1):
        first, tokens, usage = None, 0, None
        stream = c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **extra)
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                tokens += 1
                if first is None:
                    first = time.perf_counter() - a.sent
        emit("openai_usage" if include_usage else "openai", i, a.last, tokens, first, usage)
    http.close()


def with_httpx():
    a = Addresses()
    with httpx.Client(event_hooks=a.hooks()) as h:
        for i in range(N + 1):
            body = {"model": MODEL, "prompt": "Why is the sky blue?"}
            first, tokens, usage = None, 0, None
            with h.stream("POST", f"{BASE}/api/generate", json=body) as r:
                for line in r.iter_lines():
                    if not line:
                        continue
                    part = json.loads(line)
                    if part.get("response"):
                        tokens += 1
                        if first is None:
                            first = time.perf_counter() - a.sent
                    if part.get("done"):
                        usage = part.get("eval_count")
            emit("httpx", i, a.last, tokens, first, usage)


with_ollama()
with_openai(False)
with_openai(True)
with_httpx()
