"""Peers' intel in the gateway: imported indicators matched against live accounts, off the hot path.

The costly parts run at start and at (re)load, never per request:

* each API key's identity (e-mail, its organisation domain, payment fingerprint, ASN) is
  normalised and hashed under the community key once, when the key is loaded or added;
* a (re)load reads the live indicators of trusted peers from the intel store (latest version,
  not revoked, not expired, peer registered with trust > 0) into an index, hash -> matches, and
  rebuilds the evidence of the accounts whose hashes are in it.

Per request the gateway reads the account's evidence (one dict lookup). When peers sent IP /24
indicators, the client address's hash comes from a bounded cache (one more lookup; one HMAC for
an address not seen before). When peers sent prompt-template signatures, a prompt is checked
when it is one of the account's first ``FIRST_PROMPTS_CHECKED`` or when the live scorer sees a
template newly recurring in the account (three near-duplicate prompts), at most
``MAX_TEMPLATE_CHECKS`` times per account.

Evidence and reasons are the scan's (:class:`~distillguard.intel.match.AccountIntel`), so the
wording and the weights (kind strength x confidence x peer trust) are the same everywhere.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from distillguard.errors import BadInputError
from distillguard.intel.home import IntelHome
from distillguard.intel.identifiers import KeyedShingler, TemplateSignature, hash_values, ip_prefix
from distillguard.intel.match import TEMPLATE_MATCH, AccountIntel, IntelMatch
from distillguard.intel.store import IntelStore, utcnow
from distillguard.detect.minhash import minhash_signatures

log = logging.getLogger("distillguard.gateway")

IDENTITY_KINDS = (("email", "email"), ("org_domain", "email"), ("payment", "payment"), ("asn", "asn"))
MAX_IPS_PER_ACCOUNT = 16          # matched /24 hashes remembered per account (re-checked at reload)
MAX_TEMPLATE_CHECKS = 32          # keyed template checks per account (each ~50 µs)
FIRST_PROMPTS_CHECKED = 3         # an account's first prompts are checked against peers' templates
IP_CACHE = 1 << 18                # client addresses whose /24 hash is cached
FORCED_RELOAD_S = 900.0           # re-read at least this often (indicators reaching valid_from)


@dataclass(frozen=True)
class IntelIndex:
    """The live indicators of one (re)load: what the hot path reads."""

    by_hash: dict[str, tuple[IntelMatch, ...]] = field(default_factory=dict)   # identifier hash -> matches
    has_ip: bool = False
    template_sigs: np.ndarray = field(default_factory=lambda: np.zeros((0, 64), dtype=np.uint32))
    template_sizes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    template_matches: tuple[IntelMatch, ...] = ()
    templates_by_key: dict[tuple[str, str], IntelMatch] = field(default_factory=dict)
    indicators: int = 0
    peers: tuple[str, ...] = ()
    loaded_at: float = 0.0
    next_expiry: datetime | None = None


def load_index(home: IntelHome, now: datetime | None = None) -> IntelIndex:
    """Read the live indicators of trusted peers (a short read-only open of the store)."""
    trusted = sorted(name for name, peer in home.peers.items() if peer.trust > 0)
    if not trusted or not home.db_path.exists():
        return IntelIndex(peers=tuple(trusted), loaded_at=time.time())
    trust = {name: home.peers[name].trust for name in trusted}
    now = now or utcnow()
    with IntelStore(home.db_path, read_only=True) as store:
        rows = store.active_indicators(trusted, now)
        campaigns: dict[tuple[str, str], tuple[str, str]] = {}
        for peer in sorted(set(rows["peer"])) if not rows.empty else ():
            ids = sorted(rows.loc[rows["peer"] == peer, "id"])
            for iid, campaign in store.campaigns(peer, ids).items():
                campaigns[(peer, iid)] = campaign
    by_hash: dict[str, list[IntelMatch]] = {}
    sigs, sizes, template_matches = [], [], []
    expiries = []
    for r in rows.to_dict("records"):
        cid, name = campaigns.get((r["peer"], r["id"]), (None, None))
        confidence = r["confidence"]
        match = IntelMatch(peer=r["peer"], indicator=r["id"], kind=str(r["kind"]),
                           confidence=int(confidence) if confidence is not None and confidence == confidence else 0,
                           trust=trust[r["peer"]], tlp=str(r["tlp"]), campaign=name, campaign_id=cid)
        valid_until = r.get("valid_until")
        if valid_until is not None and valid_until == valid_until:     # not NaT
            expiries.append(valid_until.to_pydatetime() if hasattr(valid_until, "to_pydatetime") else valid_until)
        if match.kind == "template":
            try:
                template = TemplateSignature.from_pattern(str(r["template"]))
            except (ValueError, TypeError):
                continue
            sigs.append(template.signature)
            sizes.append(float(template.shingles))
            template_matches.append(match)
        elif isinstance(r["hash"], str):
            by_hash.setdefault(r["hash"], []).append(match)
    return IntelIndex(
        by_hash={h: tuple(ms) for h, ms in by_hash.items()},
        has_ip=any(m.kind == "ip24" for ms in by_hash.values() for m in ms),
        template_sigs=np.array(sigs, dtype=np.uint32).reshape(-1, 64),
        template_sizes=np.array(sizes, dtype=np.float64), template_matches=tuple(template_matches),
        templates_by_key={(m.peer, m.indicator): m for m in template_matches},
        indicators=len(rows), peers=tuple(trusted), loaded_at=time.time(),
        next_expiry=min(expiries) if expiries else None)


class LiveIntel:
    """Peers' indicators against the gateway's accounts; :meth:`observe` per request."""

    def __init__(self, home: str | Path, *, reload_s: float = 60.0,
                 keys: Callable[[], Iterable[Any]] | None = None) -> None:
        self.path = Path(home)
        self.home = IntelHome.load(self.path)
        self.key = self.home.community_key()
        self.reload_s = reload_s
        self._keys = keys or (lambda: ())                 # every KeyInfo (to re-hash if the key changes)
        self._lock = threading.Lock()
        self._hashes: dict[str, set[str]] = {}             # account -> its keys' identifier hashes
        self._ips: dict[str, set[str]] = {}                # account -> hashes of its /24s that matched
        self._owners: dict[str, set[str]] = {}             # hash -> accounts (identities and matched /24s)
        self._template_hits: dict[str, set[tuple[str, str]]] = {}   # account -> (peer, indicator)
        self._template_checks: dict[str, int] = {}
        self._ip_hash: dict[str, str] = {}                 # client address -> hash of its /24 ('' if none)
        self._shingler = KeyedShingler(self.key)
        self.index = IntelIndex()
        self.evidence: dict[str, AccountIntel] = {}       # read per request, replaced whole at reload
        self.reloads = 0
        self.error: str | None = None
        self._stamp = self._files_stamp()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- identities (at load, or when the admin API adds a key) ---------------------------------
    def add_keys(self, infos: Iterable[Any]) -> None:
        """Hash the identities of these keys (``KeyInfo``: account, identity) under the community key."""
        per_kind: dict[str, tuple[list[str], list[Any]]] = {kind: ([], []) for kind, _ in IDENTITY_KINDS}
        for info in infos:
            identity = info.identity or {}
            for kind, fieldname in IDENTITY_KINDS:
                value = identity.get(fieldname)
                if value is not None:
                    per_kind[kind][0].append(info.account)
                    per_kind[kind][1].append(str(value))
        changed: set[str] = set()
        with self._lock:
            for kind, (accounts, values) in per_kind.items():
                for account, digest in zip(accounts, hash_values(self.key, kind, values)):
                    if digest is not None:
                        self._own(account, digest)
                        if digest in self.index.by_hash:
                            changed.add(account)
            for account in changed:
                self._put(self.evidence, account, self.index)

    def _own(self, account: str, digest: str, *, ip: bool = False) -> None:
        (self._ips if ip else self._hashes).setdefault(account, set()).add(digest)
        self._owners.setdefault(digest, set()).add(account)

    # -- per request ------------------------------------------------------------------------------
    def observe(self, account: str, ip: str | None, prompt: str | None = None) -> AccountIntel | None:
        """The account's evidence now. ``prompt``: pass it only when a template newly recurs."""
        index = self.index
        if index.has_ip and ip:
            digest = self._ip_hash.get(ip)
            if digest is None:
                digest = self._hash_ip(ip)
            if digest and digest in index.by_hash and digest not in self._ips.get(account, ()):
                self._record(account, digest=digest)
        if prompt is not None and index.template_matches:
            self._check_template(account, prompt, index)
        return self.evidence.get(account)

    def _hash_ip(self, ip: str) -> str:
        if len(self._ip_hash) >= IP_CACHE:
            self._ip_hash.clear()
        prefix = ip_prefix(ip)
        digest = self.key.digests("ip24", [prefix])[0] if prefix else ""
        self._ip_hash[ip] = digest
        return digest

    def _check_template(self, account: str, prompt: str, index: IntelIndex) -> None:
        checks = self._template_checks.get(account, 0)
        if checks >= MAX_TEMPLATE_CHECKS:
            return
        self._template_checks[account] = checks + 1
        shingles = self._shingler(prompt[:4000])
        if not shingles:
            return
        sig = minhash_signatures([shingles])[0]
        jaccard = (index.template_sigs == sig[None, :]).mean(axis=1)
        t = index.template_sizes
        contained = np.clip(jaccard * (t + len(shingles)) / ((1.0 + jaccard) * t), 0.0, 1.0)
        for i in np.flatnonzero(contained >= TEMPLATE_MATCH):
            m = index.template_matches[int(i)]
            if (m.peer, m.indicator) not in self._template_hits.get(account, ()):
                self._record(account, template=(m.peer, m.indicator))

    def _record(self, account: str, *, digest: str | None = None, template: tuple[str, str] | None = None) -> None:
        with self._lock:
            if digest is not None:
                if len(self._ips.get(account, ())) >= MAX_IPS_PER_ACCOUNT:
                    return
                self._own(account, digest, ip=True)
            if template is not None:
                self._template_hits.setdefault(account, set()).add(template)
            self._put(self.evidence, account, self.index)

    def _put(self, evidence: dict[str, AccountIntel], account: str, index: IntelIndex) -> None:
        found: dict[tuple[str, str], IntelMatch] = {}
        for hashes in (self._hashes.get(account, ()), self._ips.get(account, ())):
            for digest in hashes:
                for m in index.by_hash.get(digest, ()):
                    found[(m.peer, m.indicator)] = m
        for k in self._template_hits.get(account, ()):
            m = index.templates_by_key.get(k)
            if m is not None:
                found[k] = m
        if found:
            evidence[account] = AccountIntel(account, tuple(sorted(found.values(), key=lambda m: (-m.weight,
                                                                                                   m.indicator))))
        else:
            evidence.pop(account, None)

    # -- reload -----------------------------------------------------------------------------------
    def _files_stamp(self) -> tuple:
        out = []
        for name in ("intel.json", "intel.duckdb", "intel.duckdb.wal", "community.key"):
            try:
                st = os.stat(self.path / name)
                out.append((name, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                out.append((name, None, None))
        return tuple(out)

    def reload(self) -> dict[str, Any]:
        """Re-read intel.json and the store; swap in the new index and evidence. Raises BadInputError
        (the old index stays) when the home or the store cannot be read."""
        stamp = self._files_stamp()
        home = IntelHome.load(self.path)
        key = home.community_key()
        index = load_index(home)
        with self._lock:
            if key.key_id != self.key.key_id:     # a new community key: every identity hash changes
                self.key, self._shingler = key, KeyedShingler(key)
                self._hashes, self._ips, self._owners, self._ip_hash = {}, {}, {}, {}
                self._template_hits, self._template_checks = {}, {}
                rehash = True
            else:
                rehash = False
            self.home = home
        if rehash:
            self.add_keys(list(self._keys()))
        with self._lock:
            affected: set[str] = set(self._template_hits)
            for digest in index.by_hash:
                owners = self._owners.get(digest)
                if owners:
                    affected |= owners
            evidence: dict[str, AccountIntel] = {}
            for account in affected:
                self._put(evidence, account, index)
            self.index, self.evidence = index, evidence
            self.reloads += 1
            self.error = None
            self._stamp = stamp
        log.info("intel loaded: %d live indicators from %d trusted peer(s), %d account(s) matched",
                 index.indicators, len(index.peers), len(evidence))
        return self.status()

    def status(self) -> dict[str, Any]:
        index = self.index
        return {"home": str(self.path), "peers": list(index.peers), "indicators": index.indicators,
                "accounts_matched": len(self.evidence),
                "accounts_flagged": sum(1 for e in list(self.evidence.values()) if e.flagged),
                "loaded_at": index.loaded_at, "reloads": self.reloads, "reload_s": self.reload_s,
                "error": self.error}

    def due(self) -> bool:
        """Should the periodic reload re-read? Files changed, an indicator expired, or a while passed."""
        index = self.index
        if self._files_stamp() != self._stamp:
            return True
        if index.next_expiry is not None and utcnow() >= index.next_expiry:
            return True
        return time.time() - index.loaded_at >= FORCED_RELOAD_S

    def start(self) -> None:
        if self.reload_s <= 0 or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="intel-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.reload_s):
            try:
                if self.due():
                    self.reload()
            except BadInputError as exc:
                self.error = str(exc)
                log.warning("intel reload failed (the previous indicators stay in force): %s", exc)
            except Exception as exc:  # never let the reload thread die silently
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("intel reload failed")
