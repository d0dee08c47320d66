"""StreamMeter: per-request timing of a relay (first byte upstream and to the client, first and last output token,
chunk spacing)."""

import time


class StreamMeter:
    """Timestamps in perf_counter seconds; results in milliseconds."""

    __slots__ = (
        "started",
        "upstream_first",
        "client_first",
        "last_sent",
        "chunks",
        "intervals",
        "first_token",
        "last_token",
        "token_deltas",
    )

    ZERO_INTERVAL_MS = 1.0

    def __init__(self, started: float | None = None) -> None:
        self.started = started if started is not None else time.perf_counter()
        self.upstream_first: float | None = None
        self.client_first: float | None = None
        self.last_sent: float | None = None
        self.chunks = 0
        self.intervals: list[float] = []
        # Output (answer, reasoning or tool call) as it is relayed: a first byte may be a role or an empty delta.
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.token_deltas = 0

    def upstream_byte(self) -> None:
        if self.upstream_first is None:
            self.upstream_first = time.perf_counter()

    def token(self) -> float:
        """A delta of output is being relayed now; the milliseconds from the start to the first one."""
        now = time.perf_counter()
        if self.first_token is None:
            self.first_token = now
        self.last_token = now
        self.token_deltas += 1
        return self._ms(self.first_token)

    def first_token_ms(self) -> float | None:
        return self._ms(self.first_token)

    def sent(self) -> None:
        now = time.perf_counter()
        if self.client_first is None:
            self.client_first = now
        else:
            self.intervals.append((now - self.last_sent) * 1000.0)
        self.last_sent = now
        self.chunks += 1

    def _ms(self, moment: float | None) -> float | None:
        return None if moment is None else round((moment - self.started) * 1000.0, 3)

    def summary(self) -> dict:
        intervals = sorted(self.intervals)
        stats = {
            "ttfb_upstream_ms": self._ms(self.upstream_first),
            "ttfb_ms": self._ms(self.client_first),
            "duration_ms": self._ms(time.perf_counter()),
            "chunk_count": self.chunks,
            "interval_mean_ms": None,
            "interval_p50_ms": None,
            "interval_p95_ms": None,
            "interval_max_ms": None,
            "zero_interval_share": None,
        }
        if intervals:
            stats.update(
                interval_mean_ms=round(sum(intervals) / len(intervals), 3),
                interval_p50_ms=round(percentile(intervals, 50), 3),
                interval_p95_ms=round(percentile(intervals, 95), 3),
                interval_max_ms=round(intervals[-1], 3),
                zero_interval_share=round(sum(1 for i in intervals if i < self.ZERO_INTERVAL_MS) / len(intervals), 4),
            )
        return stats


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile with linear interpolation over an already sorted list."""
    if not sorted_values:
        raise ValueError("percentile of an empty list")
    if len(sorted_values) == 1:
        return sorted_values[0]
    rank = (len(sorted_values) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)
