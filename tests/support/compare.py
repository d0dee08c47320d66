"""Reading /v1/compare streams in tests: each SSE event with the moment it arrived."""

import time
from dataclasses import dataclass, field

import httpx
import orjson


@dataclass
class CompareStream:
    status: int
    headers: dict
    events: list[dict] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    done_marker: bool = False
    body: bytes = b""
    # Wall-clock moment the client closed the connection (time.time(), comparable across processes).
    closed_at: float | None = None

    def of(self, model: str, kind: str | None = None) -> list[dict]:
        return [e for e in self.events if e.get("model") == model and (kind is None or e["type"] == kind)]

    def text(self, model: str) -> str:
        return "".join(e["content"] for e in self.of(model, "chunk"))

    def kinds(self, model: str) -> list[str]:
        return [e["type"] for e in self.of(model)]

    def arrival_times(self, model: str, kind: str = "chunk") -> list[float]:
        return [
            t for t, e in zip(self.arrivals, self.events, strict=True) if e.get("model") == model and e["type"] == kind
        ]


def compare_stream(base_url: str, key: str, body: dict, *, stop_when=None, timeout: float = 30.0) -> CompareStream:
    """POST /v1/compare and read its events; `stop_when(stream)` returning True closes the connection early."""
    with httpx.stream(
        "POST", base_url + "/v1/compare", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=timeout
    ) as response:
        result = CompareStream(status=response.status_code, headers=dict(response.headers))
        if response.status_code != 200:
            result.body = response.read()
            return result
        buffer = b""
        for raw in response.iter_raw():
            buffer += raw
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                assert frame.startswith(b"data: "), frame
                data = frame[len(b"data: ") :]
                if data == b"[DONE]":
                    result.done_marker = True
                    continue
                result.events.append(orjson.loads(data))
                result.arrivals.append(time.perf_counter())
            if stop_when is not None and stop_when(result):
                break
    result.closed_at = time.time()
    return result
