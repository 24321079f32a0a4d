"""Real, unmodified LLM clients streaming from an Ollama-compatible server, for the probe's
passive-accounting test (probe/tests/passive.rs). Each client keeps one connection alive
for its requests. Prints one JSON line per request: the client, the local address of the
connection it went over, the tokens it received (pieces with content), the server's usage
when it came, and its time to first token: the request's last write to its socket -> the
first line with content read by httpx, under the client library. The probe's TTFT runs from
the request's last packet to the first content packet; timing at the socket and the HTTP
layer keeps out what is the client's own work (building the request, the SDK's parsing of
each chunk into pydantic models), which added 0.5-1.5 ms and varied with the machine's load.

Usage: llm_clients.py BASE_URL MODEL N   (N requests for each of the four clients, after
one warm-up request each: a client's first request pays for its own lazy set-up, which is
no part of the server's time to first token; it is marked "warmup")
"""
import gc
import json
import sys
import time

import httpcore
import httpx
import ollama
import openai

BASE, MODEL, N = sys.argv[1], sys.argv[2], int(sys.argv[3])
MESSAGES = [{"role": "user", "content": "Why is the sky blue?"}]


def has_content(line):
    """Whether one NDJSON or SSE line of an answer carries a token's text."""
    line = line.strip()
    if line.startswith(b"data:"):
        line = line[5:].strip()
    if not line.startswith(b"{"):
        return False
    try:
        part = json.loads(line)
    except ValueError:
        return False
    if (part.get("message") or {}).get("content") or part.get("response"):
        return True
    for choice in part.get("choices") or []:
        if (choice.get("delta") or {}).get("content") or choice.get("text"):
            return True
    return False


class FirstContent(httpx.SyncByteStream):
    """An httpx response stream that notes when its first line with content arrived."""

    def __init__(self, inner, seen):
        self.inner, self.seen, self.pending = inner, seen, b""

    def __iter__(self):
        for chunk in self.inner:
            if self.seen.first is None:
                self.pending += chunk
                *lines, self.pending = self.pending.split(b"\n")
                if any(has_content(line) for line in lines):
                    self.seen.first = time.perf_counter()
            yield chunk

    def close(self):
        self.inner.close()


class TimedStream(httpcore.NetworkStream):
    """A connection's socket that notes when each write to it returned."""

    def __init__(self, inner, seen):
        self.inner, self.seen = inner, seen

    def read(self, max_bytes, timeout=None):
        return self.inner.read(max_bytes, timeout)

    def write(self, buffer, timeout=None):
        self.inner.write(buffer, timeout)
        self.seen.sent = time.perf_counter()

    def close(self):
        self.inner.close()

    def start_tls(self, *args, **kwargs):
        return TimedStream(self.inner.start_tls(*args, **kwargs), self.seen)

    def get_extra_info(self, info):
        return self.inner.get_extra_info(info)


class TimedBackend(httpcore.SyncBackend):
    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def connect_tcp(self, *args, **kwargs):
        return TimedStream(super().connect_tcp(*args, **kwargs), self.seen)


class Addresses:
    """When each request's last write to its socket returned (the transport's sockets are
    wrapped), the local address of its response's connection (a response hook) and when
    the first line with content came (the response hook wraps the body's stream)."""

    def __init__(self):
        self.last = None
        self.sent = None
        self.first = None

    def ttft(self):
        return None if self.first is None else self.first - self.sent

    def hooks(self):
        return {"request": [self.on_request], "response": [self.hook]}

    def transport(self):
        t = httpx.HTTPTransport()
        # httpx has no public way to give its pool a network backend.
        t._pool._network_backend = TimedBackend(self)
        return t

    def on_request(self, request):
        # Python's collector runs between requests, never inside the timed window: a
        # generation-0 pass there cost 1.5 ms, the same request of every run.
        gc.collect()
        self.sent = None
        self.first = None

    def hook(self, response):
        response.stream = FirstContent(response.stream, self)
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
    c = ollama.Client(host=BASE, event_hooks=a.hooks(), transport=a.transport())
    for i in range(N + 1):
        tokens = 0
        for part in c.chat(model=MODEL, messages=MESSAGES, stream=True):
            if part.message.content:
                tokens += 1
        emit("ollama", i, a.last, tokens, a.ttft(), part.eval_count)


def with_openai(include_usage):
    a = Addresses()
    http = httpx.Client(event_hooks=a.hooks(), transport=a.transport())
    c = openai.OpenAI(base_url=f"{BASE}/v1", api_key="unused", http_client=http)
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    for i in range(N + 1):
        tokens, usage = 0, None
        stream = c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **extra)
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content:
                tokens += 1
        emit("openai_usage" if include_usage else "openai", i, a.last, tokens, a.ttft(), usage)
    http.close()


def with_httpx():
    a = Addresses()
    with httpx.Client(event_hooks=a.hooks(), transport=a.transport()) as h:
        for i in range(N + 1):
            body = {"model": MODEL, "prompt": "Why is the sky blue?"}
            tokens, usage = 0, None
            with h.stream("POST", f"{BASE}/api/generate", json=body) as r:
                for line in r.iter_lines():
                    if not line:
                        continue
                    part = json.loads(line)
                    if part.get("response"):
                        tokens += 1
                    if part.get("done"):
                        usage = part.get("eval_count")
            emit("httpx", i, a.last, tokens, a.ttft(), usage)


gc.disable()
with_ollama()
with_openai(False)
with_openai(True)
with_httpx()
