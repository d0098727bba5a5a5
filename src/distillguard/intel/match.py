"""Imported indicators against our own accounts: the scan's ``intel`` signal.

Each match weighs ``strength(kind) × confidence/100 × trust(peer)`` (an e-mail or card is
near-unique, a /24 or a domain is shared); an account's intel score is the chance at least one
match is right, ``1 − Π(1 − weight)``, and it is flagged on intel alone at ``INTEL_FLAG``.
Intel only ever adds: a scan's score is the larger of its own and the intel score, and an
account the scan flagged stays flagged whatever a peer says. Revoked and expired indicators,
and those of peers no longer registered, are not read at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from distillguard.intel.home import IntelHome
from distillguard.intel.identifiers import (KIND_STRENGTH, KIND_WORDS, TemplateSignature, containment,
                                            local_identifiers, local_prompt_signatures)
from distillguard.intel.store import IntelStore

INTEL_FLAG = 0.5
TEMPLATE_MATCH = 0.7         # containment of a template's shingles for a prompt to use it
TEMPLATE_MIN_PROMPTS = 2     # ... and an account uses the template in this many sampled prompts
TEMPLATE_MIN_SHARE = 0.3     # ... and this share of them


@dataclass(frozen=True)
class IntelMatch:
    peer: str
    indicator: str
    kind: str
    confidence: int
    trust: float
    tlp: str
    campaign: str | None = None       # the campaign's name, as the peer published it
    campaign_id: str | None = None    # its STIX id (groups accounts matched to one peer campaign)

    @property
    def weight(self) -> float:
        return KIND_STRENGTH.get(self.kind, 0.0) * self.confidence / 100.0 * self.trust

    def detail(self) -> str:
        text = (f"{KIND_WORDS.get(self.kind, self.kind)} matched indicator {self.indicator} from peer {self.peer}, "
                f"confidence {self.confidence}, {self.tlp}")
        if self.campaign:
            text += f" ({self.campaign})"
        if self.trust != 1.0:
            text += f"; peer trust {self.trust:g}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"peer": self.peer, "indicator": self.indicator, "kind": self.kind, "confidence": self.confidence,
                "trust": self.trust, "tlp": self.tlp, "campaign": self.campaign,
                "campaign_id": self.campaign_id, "weight": round(self.weight, 4)}


@dataclass(frozen=True)
class AccountIntel:
    account: str
    matches: tuple[IntelMatch, ...]

    @cached_property              # read per request by the gateway's policy
    def score(self) -> float:
        return float(1.0 - np.prod([1.0 - min(1.0, m.weight) for m in self.matches]))

    @property
    def flagged(self) -> bool:
        return self.score >= INTEL_FLAG

    def reasons(self) -> list[dict[str, Any]]:
        ordered = sorted(self.matches, key=lambda m: -m.weight)
        return [{"signal": "intel_match", "family": "intel", "value": m.confidence, "p_value": None,
                 "detail": m.detail()} for m in ordered]

    def to_dict(self) -> dict[str, Any]:
        return {"score": round(self.score, 4), "flagged": self.flagged,
                "matches": [m.to_dict() for m in sorted(self.matches, key=lambda m: -m.weight)]}


@dataclass
class IntelSignal:
    """Matches a home's active imported indicators against the accounts of an events table."""

    home: IntelHome
    now: datetime | None = None
    stats_: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_home(cls, path: str | Path) -> "IntelSignal":
        return cls(IntelHome.load(path))

    def indicators(self) -> pd.DataFrame:
        if not self.home.db_path.exists() or not self.home.peers:
            return pd.DataFrame()
        with IntelStore(self.home.db_path) as store:
            return store.active_indicators(sorted(self.home.peers), self.now)

    def evaluate(self, con) -> dict[str, AccountIntel]:
        """account -> its intel evidence, for accounts with at least one match."""
        indicators = self.indicators()
        self.stats_ = {"indicators": len(indicators)}
        if indicators.empty:
            return {}
        key = self.home.community_key()
        trust = {name: p.trust for name, p in self.home.peers.items()}
        found: list[tuple[str, str, str]] = []   # (account, peer, indicator id)
        by_id = {(r["peer"], r["id"]): r for r in indicators[["peer", "id", "kind", "confidence", "tlp"]].to_dict("records")}
        idents = indicators[indicators["kind"] != "template"]
        if not idents.empty:
            local = local_identifiers(con, key, kinds=set(idents["kind"]), only=set(idents["hash"]))
            merged = local.merge(idents[["peer", "id", "kind", "hash"]], on=["kind", "hash"])
            found += list(zip(merged["account"], merged["peer"], merged["id"]))
        templates = indicators[indicators["kind"] == "template"]
        if not templates.empty:
            found += _template_matches(con, key, templates)
        self.stats_["matches"] = len(found)
        if not found:
            return {}
        campaigns: dict[tuple[str, str], tuple[str, str]] = {}
        with IntelStore(self.home.db_path) as store:
            for peer in {p for _, p, _ in found}:
                for iid, campaign in store.campaigns(peer, sorted({i for _, p, i in found if p == peer})).items():
                    campaigns[(peer, iid)] = campaign
        out: dict[str, list[IntelMatch]] = {}
        for account, peer, iid in dict.fromkeys(found):
            row = by_id[(peer, iid)]
            cid, name = campaigns.get((peer, iid), (None, None))
            out.setdefault(account, []).append(IntelMatch(
                peer=peer, indicator=iid, kind=str(row["kind"]), confidence=int(row["confidence"]),
                trust=trust.get(peer, 0.0), tlp=str(row["tlp"]), campaign=name, campaign_id=cid))
        return {a: AccountIntel(a, tuple(m)) for a, m in out.items()}


def _template_matches(con, key, templates: pd.DataFrame) -> list[tuple[str, str, str]]:
    accounts, sigs, sizes = local_prompt_signatures(con, key)
    if len(accounts) == 0:
        return []
    starts = np.flatnonzero(np.r_[True, accounts[1:] != accounts[:-1]])
    per_account = np.diff(np.r_[starts, len(accounts)])
    out = []
    for peer, iid, pattern in zip(templates["peer"], templates["id"], templates["template"]):
        hits = containment(sigs, sizes, TemplateSignature.from_pattern(pattern)) >= TEMPLATE_MATCH
        counts = np.add.reduceat(hits.astype(np.int64), starts)
        ok = (counts >= TEMPLATE_MIN_PROMPTS) & (counts >= TEMPLATE_MIN_SHARE * per_account)
        out += [(str(accounts[starts[i]]), peer, iid) for i in np.flatnonzero(ok)]
    return out
