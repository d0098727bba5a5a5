"""The Spark engine: the same per-account features, computed with ``groupBy(account).applyInPandas``.

Feature extraction is a pure function of one account's events (:func:`account_features`), so
Spark only has to group the events and call it; the result feeds the same scorer as the local
engine, which is why both engines flag the same accounts on the same input (tested in local mode).
The events go to Spark as Parquet: a store is exported first, or Parquet written elsewhere
(``distillguard export``) can be read directly with :func:`spark_features_from_parquet`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distillguard.detect.engine import input_columns_sql
from distillguard.detect.features import END_USER_SEP, FEATURES, features_with_end_users
from distillguard.errors import DistillguardError
from distillguard.store import EventStore


def _session(master: str = "local[2]"):
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise DistillguardError("--engine spark needs pyspark: pip install 'pyspark==4.3.*'") from None
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    # Workers must run this interpreter (the one with distillguard installed), not PATH's python3.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    spark = (SparkSession.builder.master(master).appName("distillguard-scan")
            .config("spark.sql.execution.arrow.pyspark.enabled", "true")
            .config("spark.sql.shuffle.partitions", "8")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.driver.host", "127.0.0.1")
            .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def _feature_schema():
    from pyspark.sql.types import ArrayType, DoubleType, LongType, StringType, StructField, StructType

    fields = [StructField("account", StringType())]
    fields += [StructField(name, DoubleType()) for name in FEATURES]
    fields.append(StructField("template_keys", ArrayType(LongType())))
    return StructType(fields)


def _per_account(max_tokens_cap: int):
    def apply(frame: pd.DataFrame) -> pd.DataFrame:
        account = str(frame["account"].iloc[0])
        rows = []
        for key, feats in features_with_end_users(account, frame, max_tokens_cap=max_tokens_cap):
            row: dict[str, Any] = {"account": key, "template_keys": list(feats.pop("template_keys"))}
            row.update({name: float(feats[name]) for name in FEATURES})
            rows.append(row)
        return pd.DataFrame(rows)

    return apply


def spark_features_from_parquet(path: str | Path, *, max_tokens_cap: int,
                                master: str = "local[2]") -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """Features per account from Parquet with the feature input columns (account, t, prompt, ...)."""
    spark = _session(master)
    events = spark.read.parquet(str(path))
    result = events.groupBy("account").applyInPandas(_per_account(max_tokens_cap), schema=_feature_schema())
    frame = result.toPandas()
    template_keys = {str(a): [int(k) for k in (keys if keys is not None else [])]
                     for a, keys in zip(frame["account"], frame["template_keys"]) if END_USER_SEP not in str(a)}
    features = frame.drop(columns=["template_keys"]).set_index("account")
    features.index.name = "account"
    features = features[list(FEATURES)].astype(np.float64)
    return features.sort_index(), template_keys


def spark_features(store: EventStore, *, max_tokens_cap: int,
                   master: str = "local[2]") -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """Export the store's feature inputs to Parquet, then compute features on Spark."""
    with tempfile.TemporaryDirectory(prefix="distillguard-spark-") as tmp:
        target = Path(tmp) / "inputs.parquet"
        quoted = str(target).replace("'", "''")
        store.run(f"COPY (SELECT account, {input_columns_sql(store)} FROM events) TO '{quoted}' (FORMAT parquet)")
        return spark_features_from_parquet(target, max_tokens_cap=max_tokens_cap, master=master)
