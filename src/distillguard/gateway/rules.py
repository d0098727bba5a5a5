"""Policy rules as data: conditions, actions, limits, and the default ladder (``DEFAULT_RULES``).

``gateway.policy`` applies them to an account's live assessment; ``gateway.config`` reads them
from TOML. Kept apart so the rules an operator writes can be read without the decision code.
"""

from __future__ import annotations

from dataclasses import dataclass

CONDITIONS = ("flagged", "cluster_flagged", "elevated", "probing", "evaluation", "intel", "intel_any", "any")
STATUS_CONDITIONS = ("probing", "evaluation")  # legitimate uses reported as their own status, never blocked
INTEL_CONDITIONS = ("intel", "intel_any")     # peers' live indicators: flagged on intel alone / any match
EVIDENCE = ("any", "elicitation")
LINKS = ("any", "infrastructure", "behaviour")   # which links carried a cluster (cluster_flagged rules)
ACTIONS = ("block", "throttle", "strip_logprobs", "strip_reasoning", "cap_max_tokens", "cohort", "shape")


@dataclass(frozen=True)
class Limits:
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {"requests_per_minute": self.requests_per_minute, "tokens_per_minute": self.tokens_per_minute}


@dataclass(frozen=True)
class Rule:
    name: str
    when: str                                   # one of CONDITIONS
    actions: tuple[str, ...]
    limits: Limits = Limits()
    max_tokens: int | None = None
    cohort: str | None = None
    shape: str = "antidistillation"             # the shaping mode the ``shape`` action asks for
    evidence: str = "any"                       # "elicitation": only when privileged content is significant
    min_queries: int = 0                        # only once the account has sent this many queries
    # Only once the rule's flag (its condition and evidence) has held this long and over this many
    # of the account's queries since this gateway first saw it hold (the flag's first request).
    sustained_s: float = 0.0
    sustained_queries: int = 0
    # cluster_flagged only: the members it applies to by what ties them to the cluster (Assessment.cluster_links).
    links: str = "any"

    @property
    def sustained(self) -> bool:
        return self.sustained_s > 0 or self.sustained_queries > 0


# Graduated by default: a single account's first flag never blocks it; it takes away what an
# extractor wants and keeps answering what a person needs. Only a flag that persists blocks.
#
# * ``flagged_elicitation`` (privileged content: reasoning traces, grades, identity, training
#   data, one-shot agent runs): reasoning fields stripped from request and answer (a reasoning
#   model's hidden trace is what a trace harvester pays for), the ``summary`` shape (a ``<think>``
#   trace cut to its first and last steps: a benchmark's scored answer survives, the steps a
#   student copies do not; not ``antidistillation``, which the lab measured helping a student,
#   docs/shaping.md), answers capped at 512 tokens, no logprobs, 10 requests and 5,000 tokens a
#   minute, and the ``watch`` watermark cohort.
# * ``flagged_coverage`` (value or broad coverage from automated prompts alone): the same limits
#   with the ``antidistillation`` shape.
# * ``flagged_persistent``: either flag blocks once it has held a day *and* over 1,000 more of
#   the account's queries since its first flagged request. An honest first benchmark pass runs in
#   one sitting (10,000 items at 10 a minute fit in a day) and a class's exercise batch is tens
#   of requests; a harvester that keeps going past stripped, shaped answers is blocked. As the
#   attacker: pausing does not restart the day; hammering the limit counts (refused queries are
#   queries); dropping the privileged-content cues only moves it to ``flagged_coverage``;
#   rotating accounts gets it, per account, a few dozen unlimited answers before the flag (as
#   before) and then only what the limits let through, without hidden traces, capped, shaped
#   and watermarked.
# * A member of a flagged hydra cluster (accounts tied to one controller, judged as one actor)
#   that shared infrastructure (payment, network, e-mail series, organisation, user agent, creation
#   burst) alone ties to MIN_CLUSTER or more accounts is blocked at once (``cluster_flagged``):
#   sharing infrastructure is a controller's mistake, not something unrelated customers do.
# * A member tied to its cluster by behaviour alone (the same prompt structure with synchronised
#   timing) gets the graduated ladder instead: independent customers running one public benchmark
#   at the same time look like that, and behaviour links can join an account to an unrelated
#   campaign's cluster. ``cluster_limited`` limits it like a single account's flag, with the rate
#   limits on the *cluster* (one bucket shared by its members, so rotating accounts inside a linked
#   swarm buys no extra rate), and ``cluster_persistent`` blocks a member once the cluster's flag
#   has held a day and over 1,000 more of the cluster's queries (summed over members) since that
#   member's first request under it. As the attacker: a swarm with no shared infrastructure gets,
#   after its flag, what one flagged account gets (10 requests a minute for the whole swarm,
#   capped, shaped, watermarked) until the flag has held a day and 1,000 queries; adding accounts
#   adds no rate (a fresh account joining the flagged cluster is limited from its first request
#   and waits its own day in the same bucket); a member flagged on its own traffic gets the
#   single account's rules first.
#
# Peers' intel never blocks on its own: another organisation's word (about a card, an e-mail, a
# network) can be wrong about our customer, so an account flagged on intel alone (intel score
# >= 0.5, e.g. one e-mail or card match at confidence 80 from a fully trusted peer) is limited
# like a coverage flag, and a weaker match (a /24 alone) only routes it to the watermark cohort.
#
# A re-run in progress: the scan reads a benchmark re-run from whole passes (``evaluation``) only
# once ~80 % of a second pass is sent, and a long first pass may have held its flag a day and
# 1,000 queries before that. While every request since the account's last new one re-sends an
# earlier one, each once (``Assessment.rerun``, from the exact send counts: gateway.sends), the
# sustained block on the account's own flag waits (the limits stay). As the attacker: the wait
# lasts only while it re-sends items already sent, each once per pass (what whole re-runs,
# reported as ``evaluation``, get anyway; no new prompt is answered during it); a new request, an
# item re-sent twice within a pass or re-sampling at random ends it, and the block, whose start
# was kept, falls at once.
#
# Security scanning (``probing``) and benchmark runs (``evaluation``) are legitimate uses with a
# status of their own, not extraction flags: they are never blocked on that status (a rule with
# ``block`` on these conditions is refused by the configuration), only held to a moderate rate
# and routed to the watermark cohort, so that a harvester dressed as one gains little and stays
# traceable.
MODIFY = ("strip_logprobs", "strip_reasoning", "cap_max_tokens", "cohort", "shape")
SUSTAINED_S = 86_400.0          # a day
SUSTAINED_QUERIES = 1000
FLAG_LIMITS = Limits(requests_per_minute=10, tokens_per_minute=5_000)
DEFAULT_RULES = (
    Rule("cluster_flagged", "cluster_flagged", ("block",), links="infrastructure"),
    Rule("cluster_persistent", "cluster_flagged", ("block",), links="behaviour", sustained_s=SUSTAINED_S,
         sustained_queries=SUSTAINED_QUERIES),
    Rule("flagged_persistent", "flagged", ("block",), sustained_s=SUSTAINED_S, sustained_queries=SUSTAINED_QUERIES),
    Rule("flagged_elicitation", "flagged", ("throttle",) + MODIFY, evidence="elicitation",
         limits=FLAG_LIMITS, max_tokens=512, cohort="watch", shape="summary"),
    Rule("flagged_coverage", "flagged", ("throttle",) + MODIFY, limits=FLAG_LIMITS, max_tokens=512, cohort="watch"),
    Rule("cluster_limited", "cluster_flagged", ("throttle",) + MODIFY, links="behaviour", limits=FLAG_LIMITS,
         max_tokens=512, cohort="watch"),
    Rule("probing", "probing", ("throttle", "cohort"), limits=Limits(requests_per_minute=60), cohort="watch"),
    Rule("evaluation", "evaluation", ("throttle", "cohort"), limits=Limits(requests_per_minute=60), cohort="watch"),
    Rule("intel_flagged", "intel", ("throttle",) + MODIFY,
         limits=Limits(requests_per_minute=10, tokens_per_minute=5_000), max_tokens=512, cohort="watch"),
    Rule("elevated", "elevated", ("throttle",) + MODIFY,
         limits=Limits(requests_per_minute=30, tokens_per_minute=30_000), max_tokens=1024, cohort="watch"),
    Rule("intel_match", "intel_any", ("cohort",), cohort="watch"),
)
