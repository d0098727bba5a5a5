"""The organic baseline: every signal fitted on organic traffic, saved as one JSON file.

``Baseline().fit(features)`` follows the scikit-learn habit (learned state ends in ``_``,
``fit`` returns self). ``p_values`` turns an account's features into one p-value per signal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
from scipy import special, stats

from distillguard.errors import BadInputError, load_json_file
from distillguard.detect.signals import SIGNALS, Signal

BASELINE_VERSION = 1
TAIL_QUANTILE = 0.95
MIN_RATE_QUERIES = 30        # accounts this busy say more about organic rates than binomial noise does
MIN_RATE_ACCOUNTS = 50       # ... if there are enough of them; otherwise fall back to FALLBACK_RATE_QUERIES
FALLBACK_RATE_QUERIES = 5


@dataclass
class RateFit:
    """Beta prior of organic accounts' rates (method of moments, binomial noise removed)."""

    alpha: float
    beta: float
    mean: float
    accounts: int

    def p_value(self, count: float, n: float) -> float:
        return float(self.p_values(np.array([count], dtype=np.float64), np.array([n], dtype=np.float64))[0])

    def p_values(self, counts: np.ndarray, n: np.ndarray) -> np.ndarray:
        """P(an organic account of this volume has at least this count), vectorised."""
        out = np.ones(len(counts), dtype=np.float64)
        ok = np.isfinite(counts) & (counts > 0) & (n > 0)
        if ok.any():
            k = np.round(counts[ok]).astype(np.int64)
            out[ok] = stats.betabinom.sf(k - 1, n[ok].astype(np.int64), self.alpha, self.beta)
        return out


@dataclass
class ValueFit:
    """Empirical upper tail of organic values, exponential beyond the 95th percentile."""

    values: np.ndarray          # sorted organic values
    tail_start: float
    tail_scale: float

    def p_value(self, x: float) -> float:
        return float(self.p_values(np.array([x], dtype=np.float64))[0])

    def p_values(self, x: np.ndarray) -> np.ndarray:
        """Upper-tail p-values of values ``x``, vectorised."""
        out = np.ones(len(x), dtype=np.float64)
        n = self.values.size
        ok = np.isfinite(x)
        if n == 0 or not ok.any():
            return out
        body = ok & (x <= self.tail_start)
        at_least = n - np.searchsorted(self.values, x[body], side="left")
        out[body] = np.minimum(1.0, (1 + at_least) / (n + 1))
        tail = ok & (x > self.tail_start)
        out[tail] = (1.0 - TAIL_QUANTILE) * np.exp(-(x[tail] - self.tail_start) / self.tail_scale)
        return out

    def quantile(self, q: float) -> float:
        cache = self.__dict__.setdefault("_quantiles", {})  # explanations ask for the same few quantiles
        if q not in cache:
            cache[q] = float(np.quantile(self.values, q)) if self.values.size else float("nan")
        return cache[q]


def fit_rate(counts: np.ndarray, totals: np.ndarray) -> RateFit:
    """Beta prior over accounts' true rates: each account counts once, whatever its volume.

    (A pooled rate would let one busy batch application define what "organic" means.)
    """
    keep = (totals >= MIN_RATE_QUERIES) & np.isfinite(counts)
    if keep.sum() < MIN_RATE_ACCOUNTS:
        keep = (totals >= FALLBACK_RATE_QUERIES) & np.isfinite(counts)
    c, n = counts[keep], totals[keep]
    if n.size == 0:
        return RateFit(0.5, 1000.0, 0.0005, 0)
    rates = c / n
    mean = float(np.clip(rates.mean(), 0.5 / (n.size + 1), 1 - 0.5 / (n.size + 1)))
    between = float(np.var(rates) - np.mean(mean * (1 - mean) / n))
    # Floor the spread at 1% of the largest possible (strength <= 99): organic rates always vary.
    between = max(between, 0.01 * mean * (1 - mean))
    strength = float(np.clip(mean * (1 - mean) / between - 1.0, 0.2, 1e5))
    return RateFit(alpha=mean * strength, beta=(1 - mean) * strength, mean=mean, accounts=int(n.size))


def fit_value(values: np.ndarray) -> ValueFit:
    v = np.sort(values[np.isfinite(values)])
    if v.size == 0:
        return ValueFit(v, float("inf"), 1.0)
    start = float(np.quantile(v, TAIL_QUANTILE))
    excess = v[v > start] - start
    spread = float(np.std(v)) or 1.0
    scale = float(excess.mean()) if excess.size else spread * 0.1
    return ValueFit(v, start, max(scale, 1e-6 * spread, 1e-9))


@dataclass
class Baseline:
    """Per-signal fits plus the null distribution of the combined statistic (Brown's method)."""

    max_tokens_cap: int = 4096
    min_queries: int = 20
    source: str = ""
    rate_fits_: dict[str, RateFit] = field(default_factory=dict)
    value_fits_: dict[str, ValueFit] = field(default_factory=dict)
    brown_c_: float = 1.0
    brown_k_: float = 8.0
    accounts_: int = 0
    created_: str = ""

    def fit(self, features: pd.DataFrame) -> "Baseline":
        """Fit every signal on organic accounts' features (rows: accounts, columns: FEATURES)."""
        if features.empty:
            raise BadInputError("cannot fit a baseline on no accounts")
        queries = features["queries"].to_numpy(dtype=np.float64)
        for signal in SIGNALS:
            if signal.kind == "rate":
                self.rate_fits_[signal.name] = fit_rate(features[signal.feature].to_numpy(dtype=np.float64), queries)
        for signal in SIGNALS:
            if signal.kind == "rate":
                continue
            column = features[signal.feature].to_numpy(dtype=np.float64)
            usable = queries >= max(signal.min_queries, 1)
            self.value_fits_[signal.name] = fit_value(column[usable])
        self.accounts_ = int(len(features))
        self.created_ = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        # Null distribution of Fisher's statistic over family p-values, for accounts with enough
        # data: Brown's method matches a scaled chi-square to its mean and variance, which
        # accounts for the families being correlated.
        from distillguard.detect.combine import family_p_values, fisher_statistic

        eligible = features[features["queries"] >= self.min_queries]
        p_frame = self.p_value_frame(eligible)
        stats_t = np.array([fisher_statistic(family_p_values(p)) for p in p_frame.to_dict("records")])
        # The bulk defines the null; the top 1% (busy legitimate apps with astronomically small
        # automation p-values) would otherwise inflate the variance and blunt every test. Those
        # accounts are kept from flags by the evidence rule in scoring, not by this fit.
        if stats_t.size >= 10:
            stats_t = stats_t[stats_t <= np.quantile(stats_t, 0.99)]
        if stats_t.size >= 10 and np.var(stats_t) > 0:
            mean, var = float(np.mean(stats_t)), float(np.var(stats_t))
            self.brown_c_ = var / (2.0 * mean)
            self.brown_k_ = max(1.0, 2.0 * mean * mean / var)
        return self

    def p_values(self, row: pd.Series | dict[str, Any]) -> dict[str, float]:
        """One p-value per signal for one account's features (no pandas: the gateway calls this
        on its request path, so the rate signals go through one vectorised beta-binomial call)."""
        n = float(row["queries"])
        rate = [s for s in SIGNALS if s.kind == "rate"]
        counts = np.array([_as_float(row.get(s.feature)) for s in rate], dtype=np.float64)
        alpha = np.array([self.rate_fits_[s.name].alpha for s in rate])
        beta = np.array([self.rate_fits_[s.name].beta for s in rate])
        p_rate = np.ones(len(rate))
        ok = np.isfinite(counts) & (counts > 0) & (n > 0)
        if ok.any():
            k = np.round(counts[ok]).astype(np.int64)
            p_rate[ok] = stats.betabinom.sf(k - 1, int(n), alpha[ok], beta[ok])
        out = {s.name: float(p) for s, p in zip(rate, p_rate)}
        for s in SIGNALS:
            if s.kind == "value":
                out[s.name] = self.value_fits_[s.name].p_value(_as_float(row.get(s.feature)))
        for s in SIGNALS:
            if n < s.min_queries:
                out[s.name] = 1.0
        return {s.name: out[s.name] for s in SIGNALS}

    def p_value_frame(self, features: pd.DataFrame) -> pd.DataFrame:
        """P-values of every signal for every account (rows as in ``features``), vectorised."""
        n = features["queries"].to_numpy(dtype=np.float64)
        out = {}
        for signal in SIGNALS:
            if signal.feature in features:
                value = features[signal.feature].to_numpy(dtype=np.float64)
            else:
                value = np.full(len(features), np.nan)
            if signal.kind == "rate":
                p = self.rate_fits_[signal.name].p_values(value, n)
            else:
                p = self.value_fits_[signal.name].p_values(value)
            p[n < signal.min_queries] = 1.0
            out[signal.name] = p
        return pd.DataFrame(out, index=features.index)

    def combined_p(self, statistic: float) -> float:
        return float(special.chdtrc(self.brown_k_, statistic / self.brown_c_))  # chi2.sf, without its overhead

    def describe(self, signal: Signal) -> dict[str, float]:
        """Organic reference figures for explanations (mean rate, or median and 99th percentile)."""
        if signal.kind == "rate":
            return {"organic_mean": self.rate_fits_[signal.name].mean}
        fit = self.value_fits_[signal.name]
        return {"organic_median": fit.quantile(0.5), "organic_p99": fit.quantile(0.99)}

    # -- persistence -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": BASELINE_VERSION, "created": self.created_, "source": self.source,
            "max_tokens_cap": self.max_tokens_cap, "min_queries": self.min_queries, "accounts": self.accounts_,
            "brown": {"c": self.brown_c_, "k": self.brown_k_},
            "rates": {k: {"alpha": v.alpha, "beta": v.beta, "mean": v.mean, "accounts": v.accounts}
                      for k, v in self.rate_fits_.items()},
            "values": {k: {"values": v.values.tolist(), "tail_start": v.tail_start,
                           "tail_scale": v.tail_scale} for k, v in self.value_fits_.items()},
        }

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(orjson.dumps(self.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY))

    @classmethod
    def load(cls, path: str | Path) -> "Baseline":
        return cls.from_dict(load_json_file(path, "baseline file"), source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<baseline>") -> "Baseline":
        if not isinstance(data, dict) or data.get("version") != BASELINE_VERSION:
            raise BadInputError(f"not a distillguard baseline (version {BASELINE_VERSION})", source=source)
        try:
            b = cls(max_tokens_cap=int(data["max_tokens_cap"]), min_queries=int(data["min_queries"]),
                    source=str(data.get("source", "")))
            b.rate_fits_ = {k: RateFit(**v) for k, v in data["rates"].items()}
            # A signal with no organic values has an infinite tail start, which JSON writes as null.
            b.value_fits_ = {k: ValueFit(np.asarray(v["values"], dtype=np.float64),
                                         float("inf") if v["tail_start"] is None else float(v["tail_start"]),
                                         float(v["tail_scale"])) for k, v in data["values"].items()}
            b.brown_c_, b.brown_k_ = float(data["brown"]["c"]), float(data["brown"]["k"])
            b.accounts_, b.created_ = int(data["accounts"]), str(data.get("created", ""))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BadInputError(f"baseline file is incomplete or malformed ({type(exc).__name__}: {exc})", source=source) from None
        missing = [s.name for s in SIGNALS if s.name not in b.rate_fits_ and s.name not in b.value_fits_]
        if missing:
            raise BadInputError(f"baseline lacks signal(s) {', '.join(missing)}; rebuild it", source=source)
        return b


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def default_baseline_path() -> Path:
    return Path(str(resources.files("distillguard").joinpath("data", "baseline.json")))


def load_default() -> Baseline:
    """The baseline shipped with the package (fitted on the lab's organic traffic)."""
    path = default_baseline_path()
    if not path.exists():
        raise BadInputError("no default baseline shipped; run 'distillguard baseline build' and pass --baseline")
    return Baseline.load(path)
