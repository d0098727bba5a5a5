"""The intel home directory: who we are, our keys, our peers, our TAXII collections.

```
intel/
  intel.json        organisation, defaults, peers and collections (owner-only: holds peer secrets)
  signing.pem       our Ed25519 private key (owner-only)
  signing.pub       our public key, one base64 line: give it to every peer
  community.key     the community HMAC key, shared out of band by all peers (owner-only)
  intel.duckdb      published objects, imported indicators, TAXII state
```
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from distillguard.errors import BadInputError, UsageError
from distillguard.intel.keys import CommunityKey, SigningKey, parse_public_key, public_key_id, public_key_text, write_secret
from distillguard.private import private_dir

HOME_ENV = "DISTILLGUARD_INTEL_HOME"
TLP_LEVELS = ("clear", "green", "amber", "amber+strict", "red")
DEFAULT_COLLECTIONS = {"shared": "Campaigns we publish for our peers",
                       "inbox": "Objects peers push to us (stored; imported only once verified)"}
_COLLECTION_NS = uuid.UUID("0b6f2d0e-6f55-4b8e-9a71-3d4b8f3c2a10")


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass
class Peer:
    """A peer organisation: whose bundles we trust, whom we pull from, who may use our server."""

    name: str
    public_key: str                 # base64 Ed25519 public key: verifies their bundles
    trust: float = 1.0              # weight in [0, 1] applied to their indicators' confidence
    url: str | None = None          # their TAXII API root, to pull from (intel sync)
    collection: str | None = None   # their collection to pull (id or title)
    secret: str | None = None       # what we present to their server (bearer token, or basic password)
    username: str | None = None     # user name their server knows us by (HTTP Basic); None: bearer
    server_secret_sha256: str | None = None   # what they present to ours
    read: list[str] = field(default_factory=list)    # our collections they may read
    write: list[str] = field(default_factory=list)   # our collections they may write

    @property
    def key_id(self) -> str:
        return public_key_id(parse_public_key(self.public_key, f"peer {self.name}"))

    def check(self) -> None:
        if not 0.0 <= self.trust <= 1.0:
            raise UsageError(f"peer {self.name}: trust must be between 0 and 1, got {self.trust}")
        parse_public_key(self.public_key, f"peer {self.name}")

    def accepts(self, presented: str) -> bool:
        return self.server_secret_sha256 is not None and hmac.compare_digest(
            secret_sha256(presented), self.server_secret_sha256)


@dataclass
class IntelHome:
    path: Path
    org: str
    identity_id: str
    identity_created: str = "2026-01-01T00:00:00.000Z"
    tlp: str = "amber"
    valid_days: int = 90
    peers: dict[str, Peer] = field(default_factory=dict)
    collections: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> {id, title, description}

    # -- files -----------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "intel.json"

    @property
    def db_path(self) -> Path:
        return self.path / "intel.duckdb"

    @property
    def public_key_path(self) -> Path:
        return self.path / "signing.pub"

    def community_key(self) -> CommunityKey:
        return CommunityKey.load(self.path / "community.key")

    def signing_key(self) -> SigningKey:
        return SigningKey.load(self.path / "signing.pem")

    # -- life cycle ------------------------------------------------------------------------------
    @classmethod
    def init(cls, path: str | Path, org: str, community: CommunityKey, *, tlp: str = "amber",
             valid_days: int = 90) -> "IntelHome":
        path = Path(path)
        if (path / "intel.json").exists():
            raise UsageError(f"{path} is already an intel home (intel.json exists)")
        if not org.strip():
            raise UsageError("--org must not be empty")
        home = cls(path=path, org=org.strip(), identity_id=f"identity--{uuid.uuid4()}",
                   identity_created=stix_now(), tlp=tlp, valid_days=valid_days)
        home.collections = {name: {"id": str(uuid.uuid5(_COLLECTION_NS, f"{home.identity_id}/{name}")),
                                   "title": name, "description": text}
                            for name, text in DEFAULT_COLLECTIONS.items()}
        home.check()
        private_dir(path)              # secrets and peers' indicators: owner-only
        key = SigningKey.generate()
        write_secret(path / "signing.pem", key.pem())
        (path / "signing.pub").write_text(public_key_text(key.public) + "\n", encoding="ascii")
        write_secret(path / "community.key", community.to_text().encode("ascii"))
        home.save()
        return home

    @classmethod
    def load(cls, path: str | Path) -> "IntelHome":
        path = Path(path)
        config = path / "intel.json"
        if not config.exists():
            raise BadInputError("not an intel home (no intel.json; create one with 'distillguard intel init')",
                                source=str(path))
        try:
            data = orjson.loads(config.read_bytes())
            peers = {name: Peer(name=name, **{k: v for k, v in p.items() if k != "name"})
                     for name, p in data.get("peers", {}).items()}
            home = cls(path=path, org=data["org"], identity_id=data["identity_id"],
                       identity_created=data.get("identity_created", "2026-01-01T00:00:00.000Z"),
                       tlp=data.get("tlp", "amber"),
                       valid_days=int(data.get("valid_days", 90)), peers=peers,
                       collections=data.get("collections", {}))
        except orjson.JSONDecodeError as exc:
            raise BadInputError(f"intel.json is not JSON ({exc})", source=str(config)) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInputError(f"intel.json is malformed ({exc!r})", source=str(config)) from None
        home.check()
        return home

    def save(self) -> None:
        data: dict[str, Any] = {"org": self.org, "identity_id": self.identity_id,
                                "identity_created": self.identity_created, "tlp": self.tlp,
                                "valid_days": self.valid_days, "collections": self.collections,
                                "peers": {name: {k: v for k, v in asdict(p).items() if k != "name"}
                                          for name, p in sorted(self.peers.items())}}
        write_secret(self.config_path, orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")

    def check(self) -> None:
        if self.tlp not in TLP_LEVELS:
            raise UsageError(f"TLP must be one of {', '.join(TLP_LEVELS)}, got {self.tlp!r}")
        if self.valid_days <= 0:
            raise UsageError("valid days must be positive")
        for peer in self.peers.values():
            peer.check()

    # -- peers -----------------------------------------------------------------------------------
    def add_peer(self, peer: Peer, *, replace: bool = False) -> None:
        if peer.name in self.peers and not replace:
            raise UsageError(f"peer {peer.name!r} exists (--replace updates it)")
        for name in peer.read + peer.write:
            if name not in self.collections:
                raise UsageError(f"no collection {name!r} (ours: {', '.join(self.collections)})")
        peer.check()
        self.peers[peer.name] = peer

    def peer_by_key_id(self, key_id: str) -> Peer | None:
        for peer in self.peers.values():
            if peer.key_id == key_id:
                return peer
        return None

    def collection_name(self, ident: str) -> str | None:
        for name, c in self.collections.items():
            if c["id"] == ident:
                return name
        return None


def stix_now() -> str:
    """Now as a STIX timestamp (UTC, milliseconds)."""
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def new_secret() -> str:
    return secrets.token_urlsafe(24)


def resolve_home(path: str | Path | None) -> Path:
    """--home, else $DISTILLGUARD_INTEL_HOME, else ./intel."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(HOME_ENV) or "intel")
