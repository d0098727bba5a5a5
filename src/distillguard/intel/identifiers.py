"""Identifiers as they may leave: normalised, then HMAC-SHA256 under the community key.

Two organisations only match if they normalise alike, so normalisation is part of the
protocol (``docs/intel.md``): e-mail lowercased with ``+tags`` dropped (and dots, at Gmail);
payment fingerprint verbatim (trimmed); IPv4 as its /24 network, IPv6 as its /48; ASN as
``AS<number>``; organisation domain = the e-mail domain unless it is a public webmail one.

Prompt templates leave as MinHash signatures of *keyed* shingles: each 3-token shingle hash is
replaced by an HMAC under the community key before MinHash, so a template cannot be confirmed
by hashing guessed texts without the key.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from distillguard.detect.hydra import WEBMAIL
from distillguard.detect.minhash import minhash_signatures, template_groups, band_keys, template_shingles
from distillguard.intel.keys import CommunityKey

KINDS = ("email", "payment", "ip24", "asn", "org_domain")
# What each kind is as evidence on its own (used by matching): a person's e-mail or card is
# near-unique; a network or an organisation's domain is shared by others.
KIND_STRENGTH = {"email": 1.0, "payment": 1.0, "template": 0.6, "ip24": 0.4, "org_domain": 0.3, "asn": 0.2}
KIND_WORDS = {"email": "e-mail hash", "payment": "payment fingerprint hash", "ip24": "IP /24 hash",
              "asn": "ASN hash", "org_domain": "organisation domain hash", "template": "prompt-template signature"}
GMAIL = frozenset({"gmail.com", "googlemail.com"})
_ASN = re.compile(r"^(?:as)?\s*(\d{1,10})$", re.IGNORECASE)
MAX_PREFIXES_PER_ACCOUNT = 16
TEMPLATE_PROMPTS_PER_ACCOUNT = 24


def normalise_email(email: str | None) -> str | None:
    if not isinstance(email, str):
        return None
    email = email.strip().lower()
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain or "." not in domain or " " in email:
        return None
    local = local.split("+", 1)[0]
    if domain in GMAIL:
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}" if local else None


def org_domain(email: str | None) -> str | None:
    normal = normalise_email(email)
    if normal is None:
        return None
    domain = normal.rpartition("@")[2]
    return None if domain in WEBMAIL else domain


_OCTET = r"(0|[1-9]\d{0,2})"
_IPV4 = re.compile(rf"^{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?:/(\d{{1,2}}))?$")


def ip_prefix(ip: str | None) -> str | None:
    """IPv4 -> its /24, IPv6 -> its /48 (addresses or networks no wider than that)."""
    if not isinstance(ip, str) or not ip:
        return None
    m = _IPV4.match(ip.strip())
    if m is None:
        return _ip_prefix_slow(ip)
    octets = [int(m.group(i)) for i in (1, 2, 3, 4)]  # the common case, without the slow ipaddress module
    bits = int(m.group(5)) if m.group(5) else 32
    if max(octets) > 255 or not 24 <= bits <= 32:
        return None
    return f"{octets[0]}.{octets[1]}.{octets[2]}.0/24"


def _ip_prefix_slow(ip: str) -> str | None:
    try:  # an address, or a network already cut (the SQL gives IPv4 as 'a.b.c.0/24')
        net = ipaddress.ip_network(ip.strip(), strict=False)
    except ValueError:
        return None
    bits = 24 if net.version == 4 else 48
    if net.prefixlen < bits:
        return None
    return str(net.supernet(new_prefix=bits))


def normalise_asn(asn: object) -> str | None:
    if isinstance(asn, bool) or asn is None:
        return None
    m = _ASN.match(str(asn).strip())
    return f"AS{int(m.group(1))}" if m else None


def normalise_payment(payment: object) -> str | None:
    return payment.strip() or None if isinstance(payment, str) else None


NORMALISERS = {"email": normalise_email, "payment": normalise_payment, "ip24": ip_prefix,
               "asn": normalise_asn, "org_domain": org_domain}


def hash_values(key: CommunityKey, kind: str, values: Iterable[str | None]) -> list[str | None]:
    """Normalise and hash raw values of one kind (None where a value does not normalise)."""
    normal = [NORMALISERS[kind](v) for v in values]
    todo = [n for n in normal if n is not None]
    hashed = iter(key.digests(kind, todo))
    return [None if n is None else next(hashed) for n in normal]


_IDENTITY_SQL = """
WITH ident AS (
    SELECT account, arg_max(identity, ts) AS identity,
           arg_max(json_extract_string(extra, '$.asn'), ts) FILTER (WHERE extra IS NOT NULL) AS extra_asn
    FROM events {where} GROUP BY account)
SELECT account, json_extract_string(identity, '$.email') AS email,
       json_extract_string(identity, '$.payment') AS payment,
       coalesce(json_extract_string(identity, '$.asn'), extra_asn) AS asn
FROM ident"""
_IP_SQL = """
WITH prefixes AS (
    SELECT account, CASE WHEN regexp_full_match(ip, '\\d+\\.\\d+\\.\\d+\\.\\d+')
                         THEN regexp_extract(ip, '^(\\d+\\.\\d+\\.\\d+)\\.', 1) || '.0/24' ELSE ip END AS prefix,
           count(*) AS n
    FROM events WHERE ip IS NOT NULL {and_where} GROUP BY ALL)
SELECT account, prefix FROM prefixes
QUALIFY row_number() OVER (PARTITION BY account ORDER BY n DESC, prefix) <= {limit}"""


def local_identifiers(con, key: CommunityKey, accounts: Sequence[str] | None = None,
                      kinds: Iterable[str] = KINDS, only: set[str] | None = None) -> pd.DataFrame:
    """Hashed identifiers of every account in an ``events`` table: columns account, kind, hash.

    ``con`` is a DuckDB connection holding ``events``. IPv4 /24s are cut in SQL; everything is
    then normalised and hashed once per distinct value (the expensive part is the HMAC).
    ``only``: keep just the rows whose hash is in this set (matching: skips building big frames).
    """
    where = and_where = ""
    if accounts is not None:
        con.register("_intel_accounts", pd.DataFrame({"account": list(accounts)}))
        where = "WHERE account IN (SELECT account FROM _intel_accounts)"
        and_where = "AND account IN (SELECT account FROM _intel_accounts)"
    columns = {r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                         "WHERE table_name = 'events'").fetchall()}
    sql = _IDENTITY_SQL if "extra" in columns else _IDENTITY_SQL.replace(
        "arg_max(json_extract_string(extra, '$.asn'), ts) FILTER (WHERE extra IS NOT NULL)", "NULL")
    ident = con.execute(sql.format(where=where)).df()
    wanted = set(kinds)
    ips = (con.execute(_IP_SQL.format(and_where=and_where, limit=MAX_PREFIXES_PER_ACCOUNT)).df() if "ip24" in wanted
           else pd.DataFrame({"account": [], "prefix": []}))
    if accounts is not None:
        con.unregister("_intel_accounts")
    frames = []
    for kind, column, frame in (("email", "email", ident), ("org_domain", "email", ident),
                                ("payment", "payment", ident), ("asn", "asn", ident), ("ip24", "prefix", ips)):
        if kind not in wanted:
            continue
        present = frame[frame[column].notna()]
        if present.empty:
            continue
        codes, uniques = pd.factorize(present[column])
        hashes = np.array(hash_values(key, kind, list(uniques)), dtype=object)
        keep = np.fromiter((h is not None and (only is None or h in only) for h in hashes), dtype=bool,
                           count=len(hashes))[codes]
        frames.append(pd.DataFrame({"account": present["account"].to_numpy()[keep], "kind": kind,
                                    "hash": hashes[codes[keep]]}))
    if not frames:
        return pd.DataFrame({"account": pd.Series(dtype=str), "kind": pd.Series(dtype=str),
                             "hash": pd.Series(dtype=str)})
    return pd.concat(frames, ignore_index=True).drop_duplicates()


# ---------------------------------------------------------------- templates

class KeyedShingler:
    """Template shingles (see :func:`template_shingles`) with each hash replaced by a keyed one."""

    def __init__(self, key: CommunityKey) -> None:
        self.key = key
        self._cache: dict[int, int] = {}

    def __call__(self, text: str) -> list[int]:
        cache = self._cache
        if len(cache) > 2_000_000:
            cache.clear()
        out = []
        for h in template_shingles(text):
            k = cache.get(h)
            if k is None:
                k = cache[h] = self.key.digest32(b"shingle\x00" + h.to_bytes(4, "little"))
            out.append(k)
        return sorted(set(out))


@dataclass(frozen=True)
class TemplateSignature:
    signature: np.ndarray   # uint32[NUM_PERM]: MinHash of the template's keyed shingles
    shingles: int           # size of the template's shingle set (for containment estimates)
    prompts: int            # prompts of ours that use it

    def to_pattern(self) -> str:
        return f"minhash-v1:{self.shingles}:" + self.signature.astype("<u4").tobytes().hex()

    @classmethod
    def from_pattern(cls, pattern: str) -> "TemplateSignature":
        prefix, shingles, hexed = pattern.split(":")
        if prefix != "minhash-v1":
            raise ValueError(f"unknown template signature format {prefix!r}")
        sig = np.frombuffer(bytes.fromhex(hexed), dtype="<u4").astype(np.uint32)
        if sig.size != 64 or int(shingles) <= 0:
            raise ValueError("a template signature has 64 values and a positive shingle count")
        return cls(signature=sig, shingles=int(shingles), prompts=0)


def campaign_templates(prompts: Sequence[str], key: CommunityKey, *, min_prompts: int = 5, min_share: float = 0.05,
                       common: float = 0.5, limit: int = 8) -> list[TemplateSignature]:
    """The recurring templates of a campaign's prompts, as keyed signatures.

    Prompts are grouped by near-duplicate structure (LSH on keyed MinHash); a template is the set
    of keyed shingles present in at least ``common`` of its group's prompts (the wrapper that
    stays, not the payload that changes).
    """
    shingler = KeyedShingler(key)
    distinct = list(dict.fromkeys(prompts))
    sets = [shingler(p) for p in distinct]
    if not sets:
        return []
    labels = template_groups(band_keys(minhash_signatures(sets)))
    groups, counts = np.unique(labels, return_counts=True)
    out = []
    for group in groups[np.argsort(-counts, kind="stable")]:
        members = np.flatnonzero(labels == group)
        if members.size < max(min_prompts, min_share * len(distinct)):
            break
        tally: dict[int, int] = {}
        for i in members:
            for s in sets[i]:
                tally[s] = tally.get(s, 0) + 1
        core = sorted(s for s, c in tally.items() if c >= common * members.size)
        if len(core) < 3:
            continue
        out.append(TemplateSignature(signature=minhash_signatures([core])[0], shingles=len(core),
                                     prompts=int(members.size)))
        if len(out) == limit:
            break
    return out


def containment(prompt_sigs: np.ndarray, prompt_sizes: np.ndarray, template: TemplateSignature) -> np.ndarray:
    """Estimated share of the template's shingles found in each prompt (from MinHash Jaccard)."""
    jaccard = (prompt_sigs == template.signature[None, :]).mean(axis=1)
    t = float(template.shingles)
    return np.clip(jaccard * (t + prompt_sizes) / ((1.0 + jaccard) * t), 0.0, 1.0)


def local_prompt_signatures(con, key: CommunityKey,
                            per_account: int = TEMPLATE_PROMPTS_PER_ACCOUNT) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(account per prompt, keyed signatures, shingle-set sizes) for each account's latest distinct prompts."""
    rows = con.execute(f"""
        SELECT account, prompt FROM (
            SELECT *, row_number() OVER (PARTITION BY account ORDER BY last DESC, prompt) AS rn FROM (
                SELECT account, left(prompt_text, 4000) AS prompt, max(ts) AS last
                FROM events WHERE prompt_text IS NOT NULL AND length(prompt_text) > 0 GROUP BY ALL))
            WHERE rn <= {int(per_account)}
        ORDER BY account""").fetchall()
    shingler = KeyedShingler(key)
    sets = [shingler(p) for _, p in rows]
    accounts = np.array([a for a, _ in rows], dtype=object)
    sizes = np.fromiter((len(s) for s in sets), dtype=np.float64, count=len(sets))
    return accounts, minhash_signatures(sets), sizes
