"""`intel export`: the confirmed campaigns of a scan as a STIX 2.1 bundle, nothing raw inside.

One campaign per flagged hydra cluster and per flagged account outside one. Each carries our
``identity``, the ``campaign`` (and a ``threat-actor`` when a cluster is attributed), ``uses``
relationships to the MITRE ATLAS techniques (ATLAS's own attack-pattern ids), ``indicator``s for the keyed hashes of its accounts'
identifiers and for its prompt templates' keyed signatures, an ``observed-data`` with counts and
first/last seen, a ``sighting`` by us, and the relationships between them; all marked TLP 2.0.
What STIX has no property for travels in distillguard's extension (extension.py), so the bundle
passes ``stix2-validator --strict`` and ``stix2.parse(..., allow_custom=False)``.

An identifier is shared only when no account outside the flagged set uses it (a /24 or an
organisation domain shared with customers in good standing would flag them at our peers); what
was withheld is counted in the result.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Sequence

import numpy as np
import orjson
import pandas as pd
import stix2

from distillguard.errors import UsageError
from distillguard.intel.extension import creator_identity, extension, extension_definition, template_pattern
from distillguard.intel.home import IntelHome
from distillguard.intel.identifiers import (KIND_WORDS, TemplateSignature, campaign_templates, containment,
                                            local_identifiers, local_prompt_signatures)
from distillguard.intel.keys import CommunityKey
from distillguard.intel.vocab import ATLAS, identifier_pattern, now_ts, tlp_marking

MIN_ATTRIBUTION = 0.5         # a cluster at least this well attributed becomes a threat-actor
TEMPLATE_CLEAR_ACCOUNTS = 2   # a template matching this many clear accounts' prompts is withheld
TEMPLATE_MATCH = 0.7          # containment of a template's shingles that counts as "uses it"
MAX_CAMPAIGN_PROMPTS = 5000


@dataclass(frozen=True)
class Campaign:
    key: str                      # the scan's cluster id, or the account
    accounts: tuple[str, ...]
    score: float
    attribution: float | None     # clusters only
    queries: int
    output_tokens: int
    first_seen: str
    last_seen: str
    areas: tuple[str, ...]

    @property
    def confidence(self) -> int:
        """0-100: the scan score mapped so that a flag at the calibrated threshold is ~55 and
        p = 1e-12 is 100, times the attribution confidence for a cluster."""
        conf = 40.0 + 60.0 * min(1.0, max(0.0, self.score))
        if self.attribution is not None:
            conf *= self.attribution
        return int(max(1, min(100, round(conf))))


@dataclass
class ExportOptions:
    tlp: str = "amber"
    valid_days: int = 90
    min_confidence: int = 50
    only: tuple[str, ...] = ()    # cluster ids or accounts to export (default: every confirmed campaign)

    def check(self) -> None:
        from distillguard.intel.home import TLP_LEVELS

        if self.tlp not in TLP_LEVELS:
            raise UsageError(f"--tlp must be one of {', '.join(TLP_LEVELS)}, got {self.tlp!r}")
        if self.valid_days <= 0:
            raise UsageError("--valid-days must be positive")
        if not 0 <= self.min_confidence <= 100:
            raise UsageError("--min-confidence must be between 0 and 100")


@dataclass
class ExportResult:
    bundle: dict[str, Any]
    campaigns: list[Campaign]
    indicators: dict[str, int] = field(default_factory=dict)   # kind -> indicators shared
    withheld: dict[str, int] = field(default_factory=dict)     # kind -> values not shared (not exclusive)

    @property
    def objects(self) -> list[dict[str, Any]]:
        return self.bundle["objects"]


def confirmed_campaigns(scan: dict[str, Any], min_confidence: int = 0, only: Sequence[str] = ()) -> list[Campaign]:
    """Flagged clusters, then flagged accounts outside them, from a scan's JSON."""
    if not isinstance(scan, dict) or not isinstance(scan.get("accounts"), list) or not isinstance(
            scan.get("clusters"), list):
        raise UsageError("not a scan result (expected 'accounts' and 'clusters'; write one with 'scan --out')")
    rows = {a["account"]: a for a in scan["accounts"] if isinstance(a, dict) and "account" in a}
    out: list[Campaign] = []
    covered: set[str] = set()
    for c in scan["clusters"]:
        if not c.get("flagged"):
            continue
        members = tuple(sorted(c["accounts"]))
        covered.update(members)
        out.append(_campaign(c["cluster"], members, float(c["score"]), float(c.get("attribution_confidence", 0.0)),
                             rows, int(c.get("queries", 0)), int(c.get("completion_tokens", 0))))
    for a in scan["accounts"]:
        if a.get("flagged") and a["account"] not in covered:
            out.append(_campaign(a["account"], (a["account"],), float(a["score"]), None, rows,
                                 int(a.get("queries", 0)), int(a.get("completion_tokens", 0))))
    if only:
        wanted = set(only)
        unknown = wanted - {c.key for c in out}
        if unknown:
            raise UsageError(f"--campaign {sorted(unknown)[0]!r} is not a flagged cluster or account of this scan")
        out = [c for c in out if c.key in wanted]
    return [c for c in out if c.confidence >= min_confidence]


def _campaign(key: str, members: tuple[str, ...], score: float, attribution: float | None,
              rows: dict[str, dict], queries: int, tokens: int) -> Campaign:
    seen = [rows[m] for m in members if m in rows]
    first = min((r["first_seen"] for r in seen if r.get("first_seen")), default=None)
    last = max((r["last_seen"] for r in seen if r.get("last_seen")), default=None)
    areas: dict[str, int] = {}
    for r in seen:
        if r.get("top_area"):
            areas[r["top_area"]] = areas.get(r["top_area"], 0) + int(r.get("queries", 0))
    return Campaign(key=key, accounts=members, score=score, attribution=attribution, queries=queries,
                    output_tokens=tokens, first_seen=_stix(first), last_seen=_stix(last or first),
                    areas=tuple(sorted(areas, key=lambda k: -areas[k])[:5]))


def _stix(ts: str | None) -> str:
    if not ts:
        return now_ts()
    t = pd.Timestamp(ts)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


class _Ids:
    """Stable object ids: the same campaign exported again keeps its ids (a new version).

    Derived with a secret only we hold, so an id reveals nothing about our account names.
    """

    def __init__(self, secret: bytes) -> None:
        self.secret = secret

    def __call__(self, kind: str, *parts: str) -> str:
        digest = hmac.new(self.secret, "\x00".join((kind,) + parts).encode("utf-8"), hashlib.sha256).digest()
        return f"{kind}--{uuid.UUID(bytes=digest[:16], version=4)}"


def export_bundle(scan: dict[str, Any], con, home: IntelHome, options: ExportOptions,
                  previous: dict[str, str] | None = None) -> ExportResult:
    """Build the bundle. ``con``: DuckDB connection with the scanned ``events``; ``previous``:
    id -> created of objects published before (a re-export keeps ``created``)."""
    options.check()
    key = home.community_key()
    signing = home.signing_key()
    ids = _Ids(hashlib.sha256(b"distillguard/object-ids\x00" + signing.pem()).digest())
    previous = previous or {}
    now = now_ts()
    valid_until = now_ts(timedelta(days=options.valid_days))
    marking = stix2.parse(tlp_marking(options.tlp), allow_custom=False)
    common = {"created_by_ref": home.identity_id, "object_marking_refs": [marking.id]}

    def created(obj_id: str) -> str:
        return previous.get(obj_id, now)

    campaigns = confirmed_campaigns(scan, options.min_confidence, options.only)
    identity = stix2.Identity(id=home.identity_id, created=home.identity_created, modified=home.identity_created,
                              name=home.org, identity_class="organization", sectors=["technology"],
                              object_marking_refs=[marking.id])
    objects: list[Any] = [marking, identity, stix2.parse(creator_identity(), allow_custom=False),
                          stix2.parse(extension_definition(), allow_custom=False)]
    result = ExportResult(bundle={}, campaigns=campaigns)
    if campaigns:
        patterns = [stix_id for _, _, stix_id in ATLAS]   # ATLAS's objects: referred to, not embedded
        flagged = {a for c in campaigns for a in c.accounts}
        hashed = local_identifiers(con, key)
        exclusive, withheld = _exclusive(hashed, flagged)
        result.withheld = withheld
        clear_prompts = _clear_prompt_sample(con, key, flagged)
        for campaign in campaigns:
            objects += _campaign_objects(campaign, con, key, ids, exclusive, clear_prompts, patterns, common,
                                         created, now, valid_until, result)
    bundle = stix2.Bundle(objects=objects, allow_custom=False)
    result.bundle = orjson.loads(bundle.serialize())
    return result


def _exclusive(hashed: pd.DataFrame, flagged: set[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    """Identifier hashes used only by flagged accounts, and how many per kind were withheld."""
    in_flagged = hashed["account"].isin(flagged)
    shared_with_clear = set(zip(hashed.loc[~in_flagged, "kind"], hashed.loc[~in_flagged, "hash"]))
    mine = hashed[in_flagged]
    keep = np.fromiter(((k, h) not in shared_with_clear for k, h in zip(mine["kind"], mine["hash"])), dtype=bool,
                       count=len(mine))
    dropped = mine[~keep].drop_duplicates(["kind", "hash"])
    return mine[keep], {str(k): int(v) for k, v in dropped["kind"].value_counts().items()}


def _clear_prompt_sample(con, key: CommunityKey, flagged: set[str], per_account: int = 8):
    accounts, sigs, sizes = local_prompt_signatures(con, key, per_account=per_account)
    keep = np.fromiter((a not in flagged for a in accounts), dtype=bool, count=len(accounts))
    return accounts[keep], sigs[keep], sizes[keep]


def _campaign_objects(campaign: Campaign, con, key: CommunityKey, ids: _Ids, exclusive: pd.DataFrame,
                      clear_prompts, patterns: list, common: dict, created, now: str, valid_until: str,
                      result: ExportResult) -> list[Any]:
    members = "\x00".join(campaign.accounts)
    short = ids("campaign", members).split("--")[1][:8]
    cluster = len(campaign.accounts) > 1
    cid = ids("campaign", members)
    what = (f"{len(campaign.accounts)} linked accounts (hydra cluster)" if cluster else "one account")
    campaign_obj = stix2.Campaign(
        id=cid, created=created(cid), modified=now, name=f"Distillation campaign {short}",
        description=(f"Model-extraction (distillation) campaign over {what}: {campaign.queries:,} queries, "
                     f"{campaign.output_tokens:,} output tokens harvested"
                     + (f"; capability areas targeted: {', '.join(campaign.areas)}" if campaign.areas else "") + "."),
        objective="Harvest the model's outputs to train a competing model (distillation).",
        first_seen=campaign.first_seen, last_seen=campaign.last_seen, confidence=campaign.confidence, **common)
    out: list[Any] = [campaign_obj]

    def rel(kind: str, source: str, target: str) -> stix2.Relationship:
        rid = ids("relationship", source, kind, target)
        return stix2.Relationship(id=rid, created=created(rid), modified=now, relationship_type=kind,
                                  source_ref=source, target_ref=target, **common)

    out += [rel("uses", cid, p) for p in patterns]
    if cluster and (campaign.attribution or 0.0) >= MIN_ATTRIBUTION:
        tid = ids("threat-actor", members)
        actor = stix2.ThreatActor(
            id=tid, created=created(tid), modified=now, name=f"Distillation actor {short}",
            description=f"The operator behind {len(campaign.accounts)} accounts linked by shared infrastructure, "
                        f"payment and prompt templates (attribution confidence {campaign.attribution:.2f}).",
            threat_actor_types=["competitor"], roles=["agent"], goals=["Replicate the model's capabilities"],
            resource_level="organization", primary_motivation="organizational-gain",
            confidence=int(round(100 * campaign.attribution)), first_seen=campaign.first_seen,
            last_seen=campaign.last_seen, **common)
        out += [actor, rel("attributed-to", cid, tid)]
        out += [rel("uses", tid, p) for p in patterns]
    # Indicators: keyed identifier hashes used by this campaign's accounts and nobody else's.
    rows = exclusive[exclusive["account"].isin(set(campaign.accounts))].drop_duplicates(["kind", "hash"])
    for kind, digest in sorted(zip(rows["kind"], rows["hash"])):
        iid = ids("indicator", cid, kind, digest)
        out.append(stix2.Indicator(
            id=iid, created=created(iid), modified=now, name=f"Distillation campaign {short}: {KIND_WORDS[kind]}",
            description=f"HMAC-SHA256 under community key {key.key_id} of a normalised {kind} identifier of an "
                        f"account in this campaign (see distillguard docs/intel.md for the normalisation).",
            indicator_types=["malicious-activity", "attribution"], pattern=identifier_pattern(kind, digest),
            pattern_type="stix", valid_from=now, valid_until=valid_until, confidence=campaign.confidence,
            extensions=extension(kind=kind, community_key_id=key.key_id), **common))
        out.append(rel("indicates", iid, cid))
        result.indicators[kind] = result.indicators.get(kind, 0) + 1
    for template in _templates(campaign, con, key, clear_prompts, result):
        iid = ids("indicator", cid, "template", template.to_pattern())
        out.append(stix2.Indicator(
            id=iid, created=created(iid), modified=now, name=f"Distillation campaign {short}: prompt template",
            description=f"MinHash (64 permutations) of the template's 3-token shingles, each HMAC-ed under community "
                        f"key {key.key_id} first; used by {template.prompts:,} distinct prompts of this campaign.",
            indicator_types=["malicious-activity"], pattern=template_pattern(template.to_pattern()),
            pattern_type="stix", pattern_version="2.1", valid_from=now, valid_until=valid_until,
            confidence=campaign.confidence, extensions=extension(kind="template", community_key_id=key.key_id),
            **common))
        out.append(rel("indicates", iid, cid))
        result.indicators["template"] = result.indicators.get("template", 0) + 1
    # Observed data and our sighting: counts and first/last seen, with accounts as opaque SCOs.
    accounts = [stix2.UserAccount(user_id=ids("user-account", a).split("--")[1], display_name="API account")
                for a in campaign.accounts]
    oid = ids("observed-data", members)
    observed = stix2.ObservedData(
        id=oid, created=created(oid), modified=now, first_observed=campaign.first_seen,
        last_observed=campaign.last_seen, number_observed=max(1, min(campaign.queries, 999_999_999)),
        object_refs=[a.id for a in accounts], extensions=extension(
            accounts=len(campaign.accounts), queries=campaign.queries, output_tokens=campaign.output_tokens),
        **common)
    sid = ids("sighting", members)
    sighting = stix2.Sighting(
        id=sid, created=created(sid), modified=now, sighting_of_ref=cid, where_sighted_refs=[common["created_by_ref"]],
        observed_data_refs=[oid], first_seen=campaign.first_seen, last_seen=campaign.last_seen,
        count=max(1, min(campaign.queries, 999_999_999)), confidence=campaign.confidence, **common)
    return out + accounts + [observed, sighting]


def _templates(campaign: Campaign, con, key: CommunityKey, clear_prompts, result: ExportResult) -> list[TemplateSignature]:
    con.register("_campaign_accounts", pd.DataFrame({"account": list(campaign.accounts)}))
    try:
        prompts = [r[0] for r in con.execute(
            "SELECT DISTINCT left(prompt_text, 4000) FROM events WHERE account IN (SELECT account FROM "
            f"_campaign_accounts) AND prompt_text IS NOT NULL ORDER BY 1 LIMIT {MAX_CAMPAIGN_PROMPTS}").fetchall()]
    finally:
        con.unregister("_campaign_accounts")
    accounts, sigs, sizes = clear_prompts
    keep = []
    for template in campaign_templates(prompts, key):
        hits = containment(sigs, sizes, template) >= TEMPLATE_MATCH if len(accounts) else np.zeros(0, dtype=bool)
        if len(set(accounts[hits])) >= TEMPLATE_CLEAR_ACCOUNTS:
            result.withheld["template"] = result.withheld.get("template", 0) + 1
            continue
        keep.append(template)
    return keep
