"""What the live scorer reads of one request (``Observation``, shipped between replicas as plain
data) and what it tells the policy (``Assessment``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from distillguard.detect.scoring import Verdict
from distillguard.gateway.online import RequestFacts


@dataclass(frozen=True, slots=True)
class Observation:
    """One request as the live scorer reads it: computed once from the request, plain data only
    (no live objects), so replicas can ship observations to each other and fold them into their
    own state. ``asdict`` writes it; ``Observation.from_dict`` reads it back.

    ``prompt`` is read only by peers' template indicators when a template newly recurs; a replica
    may ship the observation without it (None) at the cost of those matches.
    """

    account: str
    ts: float
    facts: RequestFacts
    ip: str | None = None
    user_agent: str | None = None
    identity: dict[str, Any] | None = None   # the key's identity record (payment, email, org, created)
    prompt: str | None = None

    def to_dict(self) -> dict[str, Any]:
        facts = asdict(self.facts)
        facts["word_bits"] = self.facts.word_bits.hex()
        facts["instruction_bits"] = self.facts.instruction_bits.hex()
        return {"account": self.account, "ts": self.ts, "facts": facts, "ip": self.ip,
                "user_agent": self.user_agent, "identity": self.identity, "prompt": self.prompt}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Observation":
        return cls(account=str(data["account"]), ts=float(data["ts"]), facts=RequestFacts.from_dict(data["facts"]),
                   ip=data.get("ip"), user_agent=data.get("user_agent"), identity=data.get("identity"),
                   prompt=data.get("prompt"))


INSUFFICIENT = Verdict(p_value=1.0, flagged=False, status="insufficient_data", family_p={}, reasons=())


@dataclass(frozen=True)
class Assessment:
    """What the policy reads for one request."""

    account: str
    queries: int
    verdict: Verdict
    elevated: bool                  # passes the test at ELEVATED_FACTOR x the false-positive rate
    cluster: str | None = None
    cluster_size: int = 0
    cluster_verdict: Verdict | None = None
    cluster_confidence: float = 0.0
    # What ties this account to its cluster: "infrastructure" (shared infrastructure alone ties
    # it to MIN_CLUSTER or more accounts) or "behaviour" (shared structure with timing).
    cluster_links: str = "infrastructure"
    cluster_queries: int = 0        # the cluster's queries, summed over its members
    rerun: bool = False             # flagged, and a whole pass of its earlier requests is being re-sent
    repeat: bool = False            # the prompt was seen before in this account
    intel: Any = None               # intel.match.AccountIntel: peers' live indicators this account matches
    end_user: str | None = None     # set when the verdict is this request's end user's, not the account's
    end_user_key: str | None = None  # the end-user state this request was folded into (if it named one)
    end_user_repeat: bool = False
    prompt_chars: int = 0            # for the answer-length ratio, once answered (add_output)
    probe: bool = False              # a security probe: its answer is not counted as harvest
    elicited: bool = False           # asks for privileged content: its answer counts as such harvest
