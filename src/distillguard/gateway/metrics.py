"""Prometheus metrics of one gateway (its own registry, so several gateways can share a process)."""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("distillguard_requests", "Requests answered, by endpoint and HTTP status",
                                ("endpoint", "status"), registry=r)
        self.decisions = Counter("distillguard_decisions", "Policy decisions, one per request (allow included), by "
                                 "action, first reason code ('none' when there is none) and enforcement",
                                 ("action", "code", "enforced"), registry=r)
        self.reasons = Counter("distillguard_decision_reasons", "Reason codes given, one per code of each decision "
                               "(a decision may give several: do not sum these to count decisions)", ("code",),
                               registry=r)
        self.latency = Histogram("distillguard_request_seconds", "Time from request to last byte, by endpoint",
                                 ("endpoint",), buckets=_LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram("distillguard_overhead_seconds",
                                  "Time the gateway adds (total minus waiting for the upstream)",
                                  buckets=_OVERHEAD_BUCKETS, registry=r)
        self.upstream_errors = Counter("distillguard_upstream_errors", "Upstream failures, by kind", ("kind",),
                                       registry=r)
        self.internal_errors = Counter("distillguard_internal_errors", "Errors inside the gateway (policy, scoring)",
                                       ("fail_mode",), registry=r)
        self.events_logged = Counter("distillguard_events_logged", "Events written durably to the log", registry=r)
        self.auth_failures = Counter("distillguard_auth_failures", "Requests refused for a missing or unknown key",
                                     registry=r)

    def gauges(self, backlog: Callable[[], float], unloaded_bytes: Callable[[], float],
               accounts: Callable[[], float], loaded: Callable[[], float]) -> None:
        r = self.registry
        Gauge("distillguard_log_backlog_records", "Events queued for the log but not yet fsynced",
              registry=r).set_function(backlog)
        Gauge("distillguard_log_unloaded_bytes", "Bytes in the log not yet loaded into the sink",
              registry=r).set_function(unloaded_bytes)
        Gauge("distillguard_tracked_accounts", "Accounts with live state", registry=r).set_function(accounts)
        r.register(_FunctionCounter("distillguard_events_loaded", "Events loaded from the log into the sink", loaded))

    def fleet(self, member) -> None:
        """Gauges of a fleet replica's shared state (gateway.fleet.member.FleetMember)."""
        r, state = self.registry, member.state
        Gauge("distillguard_state_shared", "1 while the fleet's shared state (Redis) answers, 0 on local state",
              registry=r).set_function(lambda: float(state.connected))
        Gauge("distillguard_state_lag_seconds", "Age of the last other replicas' observation when folded in",
              registry=r).set_function(lambda: state.lag_s)
        Gauge("distillguard_state_buffered", "Observations waiting for Redis to come back",
              registry=r).set_function(lambda: float(len(state.outbox)))
        r.register(_FunctionCounter("distillguard_state_folded",
                                    "Other replicas' observations folded into this replica's scorer",
                                    lambda: float(state.counts["folded"])))
        r.register(_FunctionCounter("distillguard_state_published", "Observations published to the other replicas",
                                    lambda: float(state.counts["published"])))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _FunctionCounter:
    """A counter whose value a function reports (a cumulative count kept elsewhere), exposed as a
    Prometheus counter (``_total``), so ``rate()`` works on it, not as a gauge."""

    def __init__(self, name: str, documentation: str, value: Callable[[], float]) -> None:
        self.name, self.documentation, self.value = name, documentation, value

    def describe(self):
        return [CounterMetricFamily(self.name, self.documentation)]

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation)
        family.add_metric([], self.value())
        return [family]

