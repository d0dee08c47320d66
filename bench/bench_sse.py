"""SSE decoder benchmark: milliseconds of event-loop time to decode what one upstream read can hold.

Feeds `providers.dialects.sse.SSEDecoder` a whole stream of OpenAI-style chunks at once (one 1 MiB read,
and twice and four times that, to show the cost grows with the size and not with its square), then the
same stream in 16 KiB reads, as the relay meets it from a fast upstream. Best of `--repeat` runs.
Usage: python bench/bench_sse.py [--mib 1] [--repeat 5]
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from providers.dialects.sse import SSEDecoder  # noqa: E402

# One streamed chat chunk as an OpenAI-compatible upstream sends it (about 200 bytes).
EVENT = (
    b'data: {"id":"chatcmpl-0123456789","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"sim-fast","choices":[{"index":0,"delta":{"content":"token "},"finish_reason":null}]}\n\n'
)


def stream_of(size: int) -> bytes:
    return EVENT * (size // len(EVENT) + 1)


def decode_ms(data: bytes, read_size: int, repeat: int) -> tuple[float, int]:
    """Best time to decode `data` fed in pieces of `read_size` bytes, and the events it gave."""
    best, count = float("inf"), 0
    for _ in range(repeat):
        decoder = SSEDecoder(max_line_bytes=len(data) + 1)
        started = time.perf_counter()
        count = 0
        for offset in range(0, len(data), read_size):
            count += len(decoder.feed(data[offset : offset + read_size]))
        best = min(best, time.perf_counter() - started)
    return best * 1000, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=1.0, help="size of the one-read stream")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    size = int(args.mib * 1024 * 1024)
    rows = []
    for factor in (1, 2, 4):
        data = stream_of(size * factor)
        ms, events = decode_ms(data, len(data), args.repeat)
        rows.append((f"{len(data) / 2**20:.1f} MiB in one read ({events:,} events)", ms))
    data = stream_of(size)
    ms, events = decode_ms(data, 16 * 1024, args.repeat)
    rows.append((f"{len(data) / 2**20:.1f} MiB in 16 KiB reads ({events:,} events)", ms))
    width = max(len(name) for name, _ in rows)
    print(f"{'SSE decoder':<{width}}  milliseconds")
    for name, value in rows:
        print(f"{name:<{width}}  {value:10.1f}")


if __name__ == "__main__":
    main()
