"""The organic baseline (distillguard.detect.baseline): rate and value fits, Baseline.fit,
persistence and its error handling, and the shipped default."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pandas as pd
import pytest

from distillguard.detect.baseline import (BASELINE_VERSION, TAIL_QUANTILE, Baseline, RateFit, ValueFit,
                                          default_baseline_path, fit_rate, fit_value, load_default)
from distillguard.detect.features import FEATURES
from distillguard.detect.signals import SIGNAL_BY_NAME, SIGNALS
from distillguard.errors import BadInputError

# Organic rate of each counted property (per prompt), for synthetic organic accounts.
ORGANIC_RATES = {"cot_count": 0.02, "grading_count": 0.01, "identity_count": 0.005, "datagen_count": 0.01,
                 "logprobs_count": 0.0, "tools_count": 0.01, "open_loop_tools_count": 0.0,
                 "orphan_followup_count": 0.02, "near_cap_count": 0.01, "single_turn_count": 0.4,
                 "templated_count": 0.1, "impersonal_count": 0.5}


def organic_frame(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """Synthetic features of ``n`` organic accounts (rows: accounts, columns: FEATURES)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        q = int(np.clip(rng.lognormal(3.5, 0.9), 5, 400))
        row = {name: float("nan") for name in FEATURES}
        span = float(rng.uniform(1, 14))
        row.update(queries=float(q), distinct_prompts=float(q), span_days=span, distinct_per_day=q / span,
                   output_tokens_per_day=q / span * rng.uniform(150, 450))
        for feature, rate in ORGANIC_RATES.items():
            r = float(rng.beta(2, 2 / rate - 2)) if rate > 0 else 0.0
            row[feature] = float(rng.binomial(q, r))
        row["topic_entropy"] = float(max(0.0, rng.normal(1.2, 0.35))) if q >= 40 else float("nan")
        row["novelty_rate"] = float(rng.uniform(0.3, 0.8))
        row["prada_w"] = float(np.clip(rng.normal(0.9, 0.04), 0, 1)) if q >= 20 else float("nan")
        row["gap_cv"] = float(rng.uniform(1.5, 6))
        row["regularity"] = -math.log10(row["gap_cv"]) if q >= 10 else float("nan")
        row["hour_entropy"] = float(max(0.0, rng.normal(2.4, 0.35))) if q >= 10 else float("nan")
        row["top_area"] = float(rng.integers(0, 17))
        row["areas_seen"] = float(rng.integers(1, 8))
        row["repeat_share"] = float(rng.uniform(0, 0.05))
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index([f"org-{i:04d}" for i in range(n)], name="account"))


@pytest.fixture(scope="module")
def organic():
    return organic_frame()


@pytest.fixture(scope="module")
def fitted(organic):
    return Baseline(source="synthetic organic").fit(organic)


# ---------------------------------------------------------------- fit_rate

def test_fit_rate_mean_matches_organic_rates():
    rng = np.random.default_rng(1)
    totals = rng.integers(30, 300, size=200).astype(float)
    counts = rng.binomial(totals.astype(int), 0.05).astype(float)
    fit = fit_rate(counts, totals)
    assert fit.accounts == 200
    assert fit.mean == pytest.approx(0.05, abs=0.01)
    assert fit.alpha > 0 and fit.beta > 0
    assert fit.alpha / (fit.alpha + fit.beta) == pytest.approx(fit.mean)


def test_fit_rate_p_value_monotone_in_count():
    rng = np.random.default_rng(2)
    totals = rng.integers(30, 300, size=200).astype(float)
    fit = fit_rate(rng.binomial(totals.astype(int), 0.05).astype(float), totals)
    ps = [fit.p_value(c, 1000) for c in range(0, 1001, 25)]
    assert all(a >= b for a, b in zip(ps, ps[1:]))
    assert ps[0] == 1.0
    assert fit.p_value(50, 1000) > 0.3               # the organic rate itself is typical
    assert fit.p_value(900, 1000) < 1e-6             # 90% where organic users reach 5%
    # the same rate is stronger evidence over more queries
    assert fit.p_value(300, 1000) < fit.p_value(30, 100) < fit.p_value(3, 10)


def test_rate_p_value_of_nothing_is_one():
    fit = RateFit(alpha=1.0, beta=50.0, mean=1 / 51, accounts=10)
    assert fit.p_value(0, 100) == 1.0
    assert fit.p_value(5, 0) == 1.0
    assert fit.p_value(float("nan"), 100) == 1.0


def test_fit_rate_ignores_low_volume_accounts_when_enough_busy_ones():
    # 60 busy accounts at ~2% and 500 tiny accounts at 100%: the tiny ones say nothing
    busy_totals = np.full(60, 200.0)
    busy_counts = np.full(60, 4.0)
    tiny_totals = np.full(500, 3.0)
    tiny_counts = np.full(500, 3.0)
    fit = fit_rate(np.concatenate([busy_counts, tiny_counts]), np.concatenate([busy_totals, tiny_totals]))
    assert fit.accounts == 60
    assert fit.mean == pytest.approx(0.02)


def test_fit_rate_on_no_usable_accounts_is_a_small_default():
    fit = fit_rate(np.array([1.0, 2.0]), np.array([2.0, 3.0]))
    assert fit.accounts == 0 and fit.mean < 0.01
    assert fit.p_value(50, 100) < 1e-6


def test_fit_rate_keeps_some_spread_even_when_organic_rates_are_identical():
    totals = np.full(100, 100.0)
    fit = fit_rate(np.full(100, 10.0), totals)           # every account at exactly 10%
    assert fit.alpha + fit.beta <= 100.0                   # strength capped by the 1% spread floor
    assert fit.p_value(12, 100) > 0.2


# ---------------------------------------------------------------- fit_value

def test_fit_value_p_value_monotone_and_typical_values_large():
    rng = np.random.default_rng(3)
    values = rng.normal(10.0, 2.0, size=1000)
    fit = fit_value(values)
    grid = np.linspace(0, 40, 401)
    ps = [fit.p_value(x) for x in grid]
    assert all(a >= b for a, b in zip(ps, ps[1:]))
    assert fit.p_value(10.0) == pytest.approx(0.5, abs=0.05)
    assert fit.p_value(0.0) == pytest.approx(1.0)
    assert fit.p_value(40.0) < 1e-10
    assert fit.tail_start == pytest.approx(np.quantile(values, TAIL_QUANTILE))


def test_fit_value_exponential_tail():
    values = np.arange(1, 101, dtype=float)                 # 1..100
    fit = fit_value(values)
    start, scale = fit.tail_start, fit.tail_scale
    assert start == pytest.approx(np.quantile(values, 0.95))
    excess = values[values > start] - start
    assert scale == pytest.approx(excess.mean())
    for k in (0.5, 1, 5, 20):
        assert fit.p_value(start + k * scale) == pytest.approx((1 - TAIL_QUANTILE) * math.exp(-k))
    # just inside the empirical part p is the share at or above it, with the +1 correction
    assert fit.p_value(50.0) == pytest.approx((1 + 51) / 101)


def test_fit_value_ignores_nan_and_empty_gives_no_evidence():
    fit = fit_value(np.array([np.nan, 1.0, 2.0, np.nan, 3.0]))
    assert fit.values.tolist() == [1.0, 2.0, 3.0]
    empty = fit_value(np.array([np.nan, np.nan]))
    assert empty.values.size == 0
    assert empty.p_value(1e9) == 1.0
    assert math.isnan(empty.quantile(0.5))
    assert fit.p_value(float("nan")) == 1.0


def test_fit_value_constant_values_still_has_a_positive_tail_scale():
    fit = fit_value(np.full(50, 2.0))
    assert fit.tail_scale > 0
    assert fit.p_value(2.0) == 1.0
    assert fit.p_value(3.0) < 1e-5


# ---------------------------------------------------------------- Baseline.fit

def test_fit_covers_every_signal(fitted, organic):
    assert fitted.accounts_ == len(organic)
    assert fitted.created_.endswith("Z")
    for signal in SIGNALS:
        if signal.kind == "rate":
            assert signal.name in fitted.rate_fits_
        else:
            assert signal.name in fitted.value_fits_
    assert fitted.rate_fits_["cot_elicitation"].mean == pytest.approx(0.02, abs=0.01)
    assert fitted.rate_fits_["single_turn"].mean == pytest.approx(0.4, abs=0.05)
    assert fitted.brown_c_ > 0 and fitted.brown_k_ >= 1


def test_fit_value_signals_use_only_accounts_with_enough_queries(fitted, organic):
    usable = organic["queries"] >= SIGNAL_BY_NAME["prada_normality"].min_queries
    assert fitted.value_fits_["prada_normality"].values.size == int(organic.loc[usable, "prada_w"].notna().sum())
    assert fitted.value_fits_["regular_cadence"].values.size == int((organic["queries"] >= 10).sum())


def test_fit_on_no_accounts_raises():
    with pytest.raises(BadInputError):
        Baseline().fit(pd.DataFrame(columns=list(FEATURES)))


def test_p_values_of_a_typical_organic_account_are_large(fitted, organic):
    row = organic.median()
    p = fitted.p_values(row)
    assert set(p) == {s.name for s in SIGNALS}
    assert min(p.values()) > 0.05, p


def test_p_values_below_min_queries_are_one(fitted):
    row = {name: 1e6 for name in FEATURES}
    row["queries"] = 5.0                              # below regular_cadence's and prada's minimum
    p = fitted.p_values(row)
    assert p["regular_cadence"] == 1.0 and p["round_the_clock"] == 1.0 and p["prada_normality"] == 1.0
    assert p["new_prompts_per_day"] < 1e-6          # min_queries 1: still judged


def test_combined_p_null_is_roughly_uniform_on_organic(fitted, organic):
    from distillguard.detect.scoring import family_p_values, fisher_statistic

    eligible = organic[organic["queries"] >= fitted.min_queries]
    ps = np.array([fitted.combined_p(fisher_statistic(family_p_values(fitted.p_values(r))))
                   for _, r in eligible.iterrows()])
    assert 0.3 < np.median(ps) < 0.8
    assert np.mean(ps <= 0.05) < 0.1


def test_describe(fitted):
    by_name = {s.name: s for s in SIGNALS}
    rate = fitted.describe(by_name["cot_elicitation"])
    assert set(rate) == {"organic_mean"}
    value = fitted.describe(by_name["round_the_clock"])
    assert value["organic_median"] == pytest.approx(2.4, abs=0.1)
    assert value["organic_p99"] > value["organic_median"]


# ---------------------------------------------------------------- persistence

def test_save_load_round_trip_gives_identical_p_values(fitted, tmp_path):
    path = tmp_path / "sub" / "baseline.json"
    fitted.save(path)
    loaded = Baseline.load(path)
    assert loaded.accounts_ == fitted.accounts_ and loaded.source == fitted.source
    assert loaded.min_queries == fitted.min_queries and loaded.max_tokens_cap == fitted.max_tokens_cap
    assert (loaded.brown_c_, loaded.brown_k_) == (fitted.brown_c_, fitted.brown_k_)
    fresh = organic_frame(100, seed=99)     # accounts the baseline was not fitted on
    for _, row in fresh.iterrows():
        assert loaded.p_values(row) == fitted.p_values(row)
    for stat in (0.0, 5.0, 20.0, 80.0):
        assert loaded.combined_p(stat) == fitted.combined_p(stat)


def test_regression_save_load_round_trip_changes_p_values_of_values_seen_in_training(fitted, organic, tmp_path):
    """BUG: Baseline.to_dict rounds stored organic values to 6 decimals, so a value equal to an
    organic value (the training rows themselves, or any account with the same histogram) gets a
    different empirical p-value after save/load than from the baseline in memory."""
    path = tmp_path / "baseline.json"
    fitted.save(path)
    loaded = Baseline.load(path)
    changed = [acct for acct, row in organic.iterrows() if loaded.p_values(row) != fitted.p_values(row)]
    assert changed == []


def test_saved_file_is_versioned_json(fitted, tmp_path):
    path = tmp_path / "b.json"
    fitted.save(path)
    data = orjson.loads(path.read_bytes())
    assert data["version"] == BASELINE_VERSION
    assert set(data["rates"]) | set(data["values"]) == {s.name for s in SIGNALS}
    assert data["accounts"] == fitted.accounts_


def _saved(fitted, tmp_path, mutate):
    data = orjson.loads(orjson.dumps(fitted.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY))
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_bytes(orjson.dumps(data))
    return path


def test_load_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="no such baseline file"):
        Baseline.load(tmp_path / "nope.json")


def test_load_not_json(tmp_path):
    path = tmp_path / "b.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(BadInputError, match="not JSON") as info:
        Baseline.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("version", [0, 2, "1", None])
def test_load_wrong_version(fitted, tmp_path, version):
    path = _saved(fitted, tmp_path, lambda d: d.__setitem__("version", version))
    with pytest.raises(BadInputError, match="not a distillguard baseline"):
        Baseline.load(path)


def test_load_json_that_is_not_an_object(tmp_path):
    path = tmp_path / "b.json"
    path.write_bytes(b"[1, 2, 3]")
    with pytest.raises(BadInputError):
        Baseline.load(path)


def test_load_missing_signal(fitted, tmp_path):
    path = _saved(fitted, tmp_path, lambda d: d["rates"].pop("cot_elicitation"))
    with pytest.raises(BadInputError, match="cot_elicitation"):
        Baseline.load(path)
    path = _saved(fitted, tmp_path, lambda d: d["values"].pop("round_the_clock"))
    with pytest.raises(BadInputError, match="round_the_clock"):
        Baseline.load(path)


@pytest.mark.parametrize("mutate", [
    lambda d: d.pop("brown"),
    lambda d: d.__setitem__("max_tokens_cap", "lots"),
    lambda d: d["rates"]["cot_elicitation"].pop("alpha"),
    lambda d: d["values"]["round_the_clock"].__setitem__("values", ["a", "b"]),
    lambda d: d["rates"]["cot_elicitation"].__setitem__("gamma", 1.0),
], ids=["no-brown", "cap-not-int", "rate-missing-alpha", "values-not-numbers", "rate-extra-key"])
def test_load_incomplete_file(fitted, tmp_path, mutate):
    with pytest.raises(BadInputError, match="incomplete"):
        Baseline.load(_saved(fitted, tmp_path, mutate))


@pytest.mark.parametrize("mutate", [
    lambda d: d.__setitem__("rates", []),
    lambda d: d.__setitem__("values", None),
], ids=["rates-is-a-list", "values-is-null"])
def test_regression_load_with_non_object_sections_raises_attribute_error(fitted, tmp_path, mutate):
    """BUG: Baseline.from_dict calls data["rates"].items() / data["values"].items() and catches only
    KeyError/TypeError/ValueError, so a section that is not an object escapes as AttributeError
    (a traceback in the CLI) instead of BadInputError."""
    with pytest.raises(BadInputError):
        Baseline.load(_saved(fitted, tmp_path, mutate))


def test_regression_load_a_directory_raises_is_a_directory_error(tmp_path):
    """BUG: Baseline.load catches FileNotFoundError and JSONDecodeError only; a directory path
    (or an unreadable file) escapes as IsADirectoryError/PermissionError, not BadInputError."""
    with pytest.raises(BadInputError):
        Baseline.load(tmp_path)


# ---------------------------------------------------------------- the shipped default

def test_default_baseline_loads():
    path = default_baseline_path()
    assert path.exists() and path.name == "baseline.json"
    b = load_default()
    assert isinstance(b, Baseline)
    assert b.accounts_ >= 1000
    assert b.min_queries > 0 and b.max_tokens_cap > 0
    assert set(b.rate_fits_) | set(b.value_fits_) == {s.name for s in SIGNALS}
    for fit in b.value_fits_.values():
        assert isinstance(fit, ValueFit)
        assert np.all(np.diff(fit.values) >= 0)          # stored sorted
        assert fit.tail_scale > 0


def test_default_baseline_finds_nothing_unusual_in_a_quiet_account():
    b = load_default()
    row = {name: float("nan") for name in FEATURES}
    row.update(queries=40.0, distinct_prompts=40.0, span_days=7.0, distinct_per_day=40 / 7,
               output_tokens_per_day=40 / 7 * 300, cot_count=0.0, grading_count=0.0, identity_count=0.0,
               datagen_count=0.0, logprobs_count=0.0, tools_count=0.0, open_loop_tools_count=0.0,
               orphan_followup_count=0.0, near_cap_count=0.0, single_turn_count=15.0, templated_count=0.0,
               impersonal_count=15.0, repeat_share=0.0)
    p = b.p_values(row)
    assert min(p.values()) > 0.05, p
