"""The local engine: per-account features and identities straight from the DuckDB store.

Accounts are processed in hash partitions of about ``PARTITION_EVENTS`` events, so memory is
bounded by one partition however large the store is.
"""

from __future__ import annotations

import math
import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Iterator

import orjson
import pandas as pd

from distillguard.detect.features import END_USER_SEP, account_features, features_frame, features_with_end_users
from distillguard.detect.hydra import SLOT_S, AccountIdentity
from distillguard.events.columns import END_USER_FROM_REQUEST_SQL
from distillguard.store import EventStore

PARTITION_EVENTS = 200_000
PARALLEL_MIN_EVENTS = 100_000  # below this, starting worker processes costs more than it saves
# Answers per request (the request's ``n``; a plain LIKE first keeps the JSON reading off requests without it).
N_CHOICES_SQL = ("CASE WHEN request LIKE '%\"n\":%' THEN try_cast(json_extract_string(request, '$.n') AS DOUBLE) "
                 "END AS n_choices")
_INPUT_COLUMNS = ("epoch(ts) AS t", "left(prompt_text, 4000) AS prompt", "left(system_prompt, 1000) AS system",
                  "n_turns", "n_messages", "max_tokens", "logprobs", "has_tools", "temperature", "completion_tokens",
                  "end_user", N_CHOICES_SQL)


def input_columns_sql(store: EventStore) -> str:
    """The feature input columns; a column an older store lacks is read as NULL."""
    present = set(store.columns())
    out = []
    for c in _INPUT_COLUMNS:
        if " AS " in c or c in present:
            out.append(c)
        elif c == "end_user" and "request" in present:
            # a store from before the column, opened read-only (so not migrated): read the bodies
            out.append(f"{END_USER_FROM_REQUEST_SQL} AS end_user")
        else:
            out.append(f"NULL AS {c}")
    return ", ".join(out)


def _quote_list(values: list[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def _one_blas_thread() -> None:
    """Worker initializer: one BLAS thread per process, or the pool oversubscribes the cores."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        pass


def _features_of_groups(groups: list[tuple[str, pd.DataFrame]], max_tokens_cap: int,
                        end_users: bool = True) -> list[tuple[str, dict]]:
    """Worker task: features of several accounts and their busy end users (module-level so a
    process pool can pickle it)."""
    return [row for account, frame in groups
            for row in features_with_end_users(account, frame, max_tokens_cap=max_tokens_cap, end_users=end_users)]


def _chunks(frame: pd.DataFrame, target_events: int) -> Iterator[list[tuple[str, pd.DataFrame]]]:
    chunk: list[tuple[str, pd.DataFrame]] = []
    size = 0
    for account, group in frame.groupby("account", sort=True):
        chunk.append((str(account), group))
        size += len(group)
        if size >= target_events:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def local_features(store: EventStore, *, max_tokens_cap: int, workers: int = 1, end_users: bool = True,
                   progress: Callable[[int, int], None] | None = None,
                   script_keys: dict[str, list[int]] | None = None) -> tuple[pd.DataFrame, dict[str, list[int]]]:
    """Features of every account (rows indexed by account) and each account's template keys.

    ``script_keys``: a dict to fill with each account's script keys (band keys in two or more of
    its prompts), which the queue-group test reads (:func:`identities`).

    With ``end_users``, accounts that name their end users also get one row per busy end user
    (keyed by ``features.end_user_key``; no template keys).

    DuckDB streams one hash partition of accounts at a time (bounded memory); the per-account
    work, pure Python text processing, runs in a process pool on every core for large stores.
    """
    total = store.count()
    partitions = max(1, math.ceil(total / PARTITION_EVENTS))
    columns = input_columns_sql(store)
    # Worker processes are spawned, which re-imports the caller's __main__: library callers
    # opt in (scripts need the usual `if __name__ == "__main__":` guard); the CLI always does.
    workers = max(1, workers or 1) if total >= PARALLEL_MIN_EVENTS else 1
    rows: list[dict[str, Any]] = []
    accounts: list[str] = []
    template_keys: dict[str, list[int]] = {}
    done = 0
    pool = (ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_one_blas_thread)
            if workers > 1 else None)
    try:
        for part in range(partitions):
            where = f"WHERE hash(account) % {partitions} = {part}" if partitions > 1 else ""
            frame = store.con.sql(f"SELECT account, {columns} FROM events {where}").df()
            chunks = list(_chunks(frame, max(1000, len(frame) // (4 * workers))))
            if pool is None:
                results = (_features_of_groups(chunk, max_tokens_cap, end_users) for chunk in chunks)
            else:
                results = pool.map(_features_of_groups, chunks, [max_tokens_cap] * len(chunks),
                                   [end_users] * len(chunks))
            for batch in results:
                for account, feats in batch:
                    keys = feats.pop("template_keys")
                    script = feats.pop("script_keys", [])
                    if END_USER_SEP not in account:  # end users' rows carry none (links are accounts')
                        template_keys[account] = keys
                        if script_keys is not None:
                            script_keys[account] = script
                    rows.append(feats)
                    accounts.append(account)
            done += len(frame)
            if progress is not None:
                progress(done, total)
    finally:
        if pool is not None:
            pool.shutdown()
    features = features_frame(rows, accounts)
    return features.sort_index(), template_keys


def features_for(store: EventStore, accounts: list[str], *, max_tokens_cap: int) -> dict[str, Any]:
    """Features of several accounts' traffic taken together (a cluster scored as one actor)."""
    frame = store.con.sql(f"SELECT {input_columns_sql(store)} FROM events "
                          f"WHERE account IN ({_quote_list(accounts)})").df()
    feats = account_features(frame, max_tokens_cap=max_tokens_cap)
    feats.pop("template_keys")
    feats.pop("script_keys", None)
    return feats


def account_totals(store: EventStore) -> pd.DataFrame:
    """Queries, tokens and first/last seen per account."""
    return store.con.sql(
        "SELECT account, count(*) AS queries, coalesce(sum(prompt_tokens), 0) AS prompt_tokens, "
        "coalesce(sum(completion_tokens), 0) AS completion_tokens, min(ts) AS first_seen, max(ts) AS last_seen "
        "FROM events GROUP BY account").df().set_index("account")


def identities(store: EventStore, template_keys: dict[str, list[int]],
               areas: dict[str, int] | None = None,
               script_keys: dict[str, list[int]] | None = None) -> list[AccountIdentity]:
    """Linkable attributes of every account (latest identity record, IP /24s, agent, active hours
    and ten-minute slots, first and last request, queries; ``areas``: each account's top
    capability area; ``script_keys``: from :func:`local_features`, for the queue-group test)."""
    rows = store.con.sql("""
        WITH ip AS (
            SELECT account, regexp_extract(ip, '^(\\d+\\.\\d+\\.\\d+)\\.\\d+$', 1) AS prefix, count(*) AS n
            FROM events WHERE ip IS NOT NULL GROUP BY ALL),
        top_ip AS (
            SELECT account, list(prefix ORDER BY n DESC)[1:3] AS prefixes FROM ip WHERE prefix <> '' GROUP BY account),
        base AS (
            SELECT account, arg_max(identity, ts) AS identity, mode(user_agent) AS user_agent,
                   list(DISTINCT CAST(epoch(ts) // 3600 AS BIGINT))[1:2000] AS hours,
                   list(DISTINCT CAST(epoch(ts) // {SLOT_S} AS BIGINT))[1:4000] AS slots,
                   min(epoch(ts)) AS first, max(epoch(ts)) AS last, count(*) AS queries
            FROM events GROUP BY account)
        SELECT base.account, identity, user_agent, hours, prefixes, slots, first, last, queries
        FROM base LEFT JOIN top_ip USING (account) ORDER BY base.account""".replace("{SLOT_S}", str(SLOT_S))).fetchall()
    areas = areas or {}
    script_keys = script_keys or {}
    out = []
    for account, identity_json, user_agent, hours, prefixes, slots, first, last, queries in rows:
        ident = _identity_fields(identity_json)
        out.append(AccountIdentity(
            account=account, ip24=tuple(prefixes or ()), payment=ident.get("payment"), email=ident.get("email"),
            org=ident.get("org"), user_agent=user_agent, created=ident.get("created_ts"),
            active_hours=frozenset(int(h) for h in (hours or ())),
            template_keys=tuple(template_keys.get(account, ())), slots=frozenset(int(x) for x in (slots or ())),
            first=float(first) if first is not None else None, last=float(last) if last is not None else None,
            area=areas.get(account), queries=int(queries or 0),
            script_keys=tuple(script_keys.get(account, ()))))
    return out


def _identity_fields(identity_json: str | None) -> dict[str, Any]:
    if not identity_json:
        return {}
    try:
        data = orjson.loads(identity_json)
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {k: data[k] for k in ("payment", "email", "org") if isinstance(data.get(k), str)}
    created = data.get("created")
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        out["created_ts"] = float(created)
    elif isinstance(created, str):
        try:
            out["created_ts"] = pd.Timestamp(created).timestamp()
        except ValueError:
            pass
    return out
