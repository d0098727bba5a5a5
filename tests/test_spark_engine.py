"""The Spark engine (real Spark, local mode) gives the same features and flags as the local engine."""

from __future__ import annotations

import numpy as np
import pytest

from distillguard.detect.scan import ScanOptions, scan_paths
from distillguard.lab.campaigns import CampaignSpec
from distillguard.lab.traffic import TrafficConfig, generate

pytestmark = pytest.mark.slow


def test_spark_equals_local(tmp_path):
    config = TrafficConfig(seed=23, accounts=40, days=2, batch_per_day=200,
                           campaigns=(CampaignSpec("sweep", per_day=300), CampaignSpec("cot", per_day=250),
                                      CampaignSpec("hydra", accounts=12, per_day=200),
                                      # a reseller naming its customers: end users get rows of their own
                                      CampaignSpec("mixed", per_day=2000, extraction_share=0.05, content="replay")))
    events = generate(config, tmp_path).events_path
    local = scan_paths([events], ScanOptions(engine="local"))
    spark = scan_paths([events], ScanOptions(engine="spark"))
    for a, b in ((local.features, spark.features), (local.end_user_features, spark.end_user_features)):
        a, b = a.sort_index(), b.sort_index()
        assert list(a.index) == list(b.index)
        assert np.allclose(a.to_numpy(), b.to_numpy(), equal_nan=True)
    assert len(local.end_user_features) >= 10
    flags_local = {r.account: r.flagged for r in local.accounts}
    flags_spark = {r.account: r.flagged for r in spark.accounts}
    assert flags_local == flags_spark
    assert sum(flags_local.values()) >= 2 + 12 + 1  # the campaigns, the hydra cluster and the reseller
    assert ({u.end_user for r in local.accounts for u in r.end_users}
            == {u.end_user for r in spark.accounts for u in r.end_users} != set())
    assert [c.accounts for c in local.clusters] == [c.accounts for c in spark.clusters]
