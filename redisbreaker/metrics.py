"""Prometheus metrics for the whole fleet, read from Redis at each scrape.

Every breaker's state and fleet-wide totals already live in Redis, so one collector
scraping one Redis gives the truth for every worker on every host, with no
aggregator. Register it in your own registry, or run ``redisbreaker serve``::

    from prometheus_client import REGISTRY
    from redisbreaker.metrics import FleetCollector
    REGISTRY.register(FleetCollector(client, prefix="rb:"))

Names follow resilience4j's where they mean the same (``..._state{state=...}``,
``..._calls{kind=successful|failed|ignored|not_permitted}``, ``..._failure_rate``,
``..._slow_call_rate``), under the ``redisbreaker_`` prefix. Needs the ``serve``
extra (``prometheus-client``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from redisbreaker.fleet import Fleet
from redisbreaker.state import State

LABELS = ["name", "scope", "scope_key"]


class FleetCollector(Collector):
    """A Prometheus collector over :class:`~redisbreaker.fleet.Fleet` (one scan a scrape)."""

    def __init__(self, client: Any, prefix: str = "rb:") -> None:
        self.fleet = Fleet(client, prefix)

    def collect(self) -> Iterator[Any]:
        breakers = self.fleet.breakers()
        state = GaugeMetricFamily(
            "redisbreaker_circuitbreaker_state",
            "1 for the state each breaker is in, 0 for the others",
            labels=[*LABELS, "state"],
        )
        calls = CounterMetricFamily(
            "redisbreaker_circuitbreaker_calls",
            "Calls through each breaker, fleet-wide, by kind",
            labels=[*LABELS, "kind"],
        )
        slow = CounterMetricFamily(
            "redisbreaker_circuitbreaker_slow_calls", "Calls slower than slow_call_duration",
            labels=LABELS,
        )  # fmt: skip
        trips = CounterMetricFamily(
            "redisbreaker_circuitbreaker_trips", "Automatic trips", labels=LABELS
        )
        open_seconds = CounterMetricFamily(
            "redisbreaker_circuitbreaker_open_seconds", "Time spent open", labels=LABELS
        )
        failure_rate = GaugeMetricFamily(
            "redisbreaker_circuitbreaker_failure_rate",
            "Failures / calls in the breaker's window (0 when empty)", labels=LABELS,
        )  # fmt: skip
        slow_rate = GaugeMetricFamily(
            "redisbreaker_circuitbreaker_slow_call_rate",
            "Slow calls / calls in the breaker's window (0 when empty)", labels=LABELS,
        )  # fmt: skip
        retry = GaugeMetricFamily(
            "redisbreaker_circuitbreaker_retry_after_seconds",
            "Seconds until an open breaker lets a trial call through", labels=LABELS,
        )  # fmt: skip
        for b in breakers:
            labels = [b.name, b.scope, b.scope_key]
            for s in State:
                state.add_metric([*labels, s.value], 1.0 if b.state is s else 0.0)
            t = b.totals
            for kind, value in (
                ("successful", t.successful), ("failed", t.failed), ("ignored", t.ignored),
                ("not_permitted", t.not_permitted),
            ):  # fmt: skip
                calls.add_metric([*labels, kind], value)
            slow.add_metric(labels, t.slow)
            trips.add_metric(labels, t.trips)
            open_seconds.add_metric(labels, t.open_ms / 1000.0)
            failure_rate.add_metric(labels, b.failure_rate)
            slow_rate.add_metric(labels, b.slow_call_rate)
            retry.add_metric(labels, b.retry_after)
        yield from (state, calls, slow, trips, open_seconds, failure_rate, slow_rate, retry)
        yield from self._workers()
        yield from self._transactions()
        yield from self._dead_letters()
        yield from self._data_set()

    def _data_set(self) -> Iterator[Any]:
        created = GaugeMetricFamily(
            "redisbreaker_data_set_created_timestamp_seconds",
            "When the data set under the prefix was made (it changes when Redis loses it)",
        )  # fmt: skip
        lost = GaugeMetricFamily(
            "redisbreaker_data_set_lost_timestamp_seconds",
            "When Redis was found to have lost the data set before this one (0: never)",
        )  # fmt: skip
        data = self.fleet.data_set()
        if data is not None:
            created.add_metric([], data.created_ms / 1000.0)
            lost.add_metric([], data.lost_at_ms / 1000.0)
        yield created
        yield lost

    def _dead_letters(self) -> Iterator[Any]:
        waiting = GaugeMetricFamily(
            "redisbreaker_dead_letters", "Dead-lettered tasks waiting, per queue", labels=["queue"]
        )
        moved = CounterMetricFamily(
            "redisbreaker_dead_letters_moved", "Dead letters by what happened: added, "
            "dropped (by the cap), replayed, purged", labels=["queue", "kind"],
        )  # fmt: skip
        for q in self.fleet.dead_letters():
            waiting.add_metric([q.queue], q.entries)
            for kind in ("added", "dropped", "replayed", "purged"):
                moved.add_metric([q.queue, kind], getattr(q, kind))
        yield waiting
        yield moved

    def _workers(self) -> Iterator[Any]:
        paused = GaugeMetricFamily(
            "redisbreaker_queue_paused",
            "1 while a worker's gate keeps a queue paused", labels=["worker", "queue"],
        )  # fmt: skip
        alive = GaugeMetricFamily(
            "redisbreaker_worker_up", "Workers whose gate heartbeat is fresh", labels=["worker"]
        )
        for w in self.fleet.workers():
            alive.add_metric([w.worker], 1.0)
            for q in w.queues:
                paused.add_metric([w.worker, q], 1.0 if q in w.paused else 0.0)
        yield paused
        yield alive

    def _transactions(self) -> Iterator[Any]:
        by_outcome = GaugeMetricFamily(
            "redisbreaker_transactions", "Transactions kept in Redis, by outcome",
            labels=["outcome"],
        )  # fmt: skip
        waiting = GaugeMetricFamily(
            "redisbreaker_transaction_votes_waiting",
            "Votes still missing, per pending transaction", labels=["tx_id"],
        )  # fmt: skip
        counts = {"pending": 0, "commit": 0, "rollback": 0}
        for tx in self.fleet.transactions():
            counts[tx.outcome] = counts.get(tx.outcome, 0) + 1
            if tx.outcome == "pending":
                waiting.add_metric([tx.tx_id], max(0, tx.participants - tx.yes - tx.no))
        for outcome, n in counts.items():
            by_outcome.add_metric([outcome], n)
        yield by_outcome
        yield waiting
