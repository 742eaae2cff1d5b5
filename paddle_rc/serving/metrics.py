"""Counters, gauges and histograms in Prometheus' text exposition format (version 0.0.4)."""
from __future__ import annotations

import bisect
import threading
from typing import Callable, Dict, Sequence, Tuple

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Metrics:
    def __init__(self, prefix: str = "paddle_rc"):
        self.prefix = prefix
        self._lock = threading.Lock()
        self._families: Dict[str, Tuple[str, str]] = {}  # name -> (type, help)
        self._values: Dict[str, Dict[tuple, float]] = {}
        self._buckets: Dict[str, Sequence[float]] = {}
        self._hist: Dict[str, Dict[tuple, list]] = {}  # labels -> [bucket counts..., sum, count]
        self._gauges: Dict[str, Callable[[], float]] = {}

    # ---- declaring ----------------------------------------------------------------------------------
    def counter(self, name: str, help: str) -> None:
        self._families[name] = ("counter", help)
        self._values[name] = {}

    def gauge(self, name: str, help: str, read: Callable[[], float]) -> None:
        self._families[name] = ("gauge", help)
        self._gauges[name] = read

    def histogram(self, name: str, help: str, buckets: Sequence[float]) -> None:
        self._families[name] = ("histogram", help)
        self._buckets[name] = tuple(buckets)
        self._hist[name] = {}

    # ---- updating -----------------------------------------------------------------------------------
    def inc(self, name: str, value: float = 1, **labels) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[name][key] = self._values[name].get(key, 0) + value

    def observe(self, name: str, value: float, **labels) -> None:
        key = tuple(sorted(labels.items()))
        buckets = self._buckets[name]
        with self._lock:
            row = self._hist[name].setdefault(key, [0] * len(buckets) + [0.0, 0])
            i = bisect.bisect_left(buckets, value)  # le semantics: value <= bound counts in that bucket
            for j in range(i, len(buckets)):
                row[j] += 1
            row[-2] += value
            row[-1] += 1

    def value(self, name: str, **labels) -> float:
        with self._lock:
            return self._values[name].get(tuple(sorted(labels.items())), 0)

    # ---- exposition ---------------------------------------------------------------------------------
    def render(self) -> str:
        lines = []
        with self._lock:
            for name, (kind, help) in self._families.items():
                full = f"{self.prefix}_{name}" + ("_total" if kind == "counter" else "")
                lines.append(f"# HELP {full} {help}")
                lines.append(f"# TYPE {full} {kind}")
                if kind == "counter":
                    for key, v in sorted(self._values[name].items()):
                        lines.append(f"{full}{_labels(key)} {_num(v)}")
                elif kind == "gauge":
                    lines.append(f"{full} {_num(self._gauges[name]())}")
                else:
                    bounds = self._buckets[name]
                    for key, row in sorted(self._hist[name].items()):
                        for bound, count in zip(bounds, row):
                            lines.append(f"{full}_bucket{_labels(key, le=_num(bound))} {count}")
                        lines.append(f"{full}_bucket{_labels(key, le='+Inf')} {row[-1]}")
                        lines.append(f"{full}_sum{_labels(key)} {_num(row[-2])}")
                        lines.append(f"{full}_count{_labels(key)} {row[-1]}")
        return "\n".join(lines) + "\n"


def _labels(key: tuple, **extra) -> str:
    items = list(key) + list(extra.items())
    if not items:
        return ""
    body = ",".join(f'{k}="{_escape(str(v))}"' for k, v in items)
    return "{" + body + "}"


def _escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def server_metrics(queue_depth: Callable[[], float], active: Callable[[], float]) -> Metrics:
    """The server's metric families."""
    m = Metrics()
    m.counter("requests", "HTTP requests to /v1/chat/completions by status code")
    m.counter("requests_cancelled", "requests whose client went away before the answer was done")
    m.gauge("queue_depth", "requests waiting for a batch slot", queue_depth)
    m.gauge("active_sequences", "sequences being decoded", active)
    m.histogram("batch_size", "sequences per decode step", BATCH_BUCKETS)
    m.counter("prompt_tokens", "prompt tokens read by the language model (after visual-token compression)")
    m.counter("completion_tokens", "tokens generated")
    m.counter("visual_tokens_before", "visual tokens per image before compression, summed")
    m.counter("visual_tokens_after", "visual tokens handed to the language model, summed")
    m.histogram("request_latency_seconds", "time from request to the last token", LATENCY_BUCKETS)
    m.histogram("time_to_first_token_seconds", "time from request to the first token", LATENCY_BUCKETS)
    m.histogram("queue_seconds", "time a request waited for a batch slot", LATENCY_BUCKETS)
    return m
