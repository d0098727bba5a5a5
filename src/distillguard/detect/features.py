"""Per-account features: a pure function of one account's events.

The same function runs in the local engine (DuckDB + pandas) and inside Spark's
``groupBy(account).applyInPandas``, so both engines produce the same numbers.

Input frame columns (``ACCOUNT_INPUT_COLUMNS``): ``t`` epoch seconds, ``prompt``, ``system``,
``n_turns``, ``n_messages``, ``max_tokens``, ``logprobs``, ``has_tools``, ``temperature``,
``completion_tokens``, ``end_user``.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from distillguard.detect import probes
from distillguard.detect.cue_index import CueTexts
from distillguard.detect import text as tx
from distillguard.detect.minhash import band_keys, minhash_signatures, template_groups, template_shingles
from distillguard.detect.obfuscation import reveal

ACCOUNT_INPUT_COLUMNS = ("t", "prompt", "system", "n_turns", "n_messages", "max_tokens", "logprobs", "has_tools",
                         "temperature", "completion_tokens", "end_user")
DEFAULT_MAX_TOKENS_CAP = 4096
COVERAGE_SAMPLE = 300      # distinct prompts used for coverage statistics (evenly over time)
BREADTH_SAMPLE = 40        # topic breadth is measured on windows of this many distinct prompts ...
BREADTH_WINDOWS = 10       # ... averaged over up to this many consecutive windows
EMBEDDING_MIN_DISTINCT = 50  # novelty and PRADA statistics need at least this many distinct prompts
NOVELTY_SIMILARITY = 0.35  # a prompt is "new ground" if no earlier prompt is this similar
TEMPLATE_MIN_GROUP = 3
SCRIPT_KEYS = 48           # band keys kept per account for the queue-group test (detect/queue_groups.py)
INSTRUCTION_SAMPLE = 300   # distinct prompts read for the fixed-instruction share (evenly over time)
INSTRUCTION_MIN_DISTINCT = 20  # below this many distinct prompts the share is not measured
PROMPT_CHARS, SYSTEM_CHARS = 4000, 1000   # what the engines read of each (answer ratio uses the same)

# Numeric features, in a fixed order (the Spark output schema and the baseline both use it).
BASE_FEATURES = (
    "queries", "distinct_prompts", "span_days", "distinct_per_day", "output_tokens_per_day",
    "cot_count", "grading_count", "identity_count", "datagen_count", "logprobs_count", "tools_count",
    "open_loop_tools_count", "orphan_followup_count",
    "near_cap_count", "single_turn_count", "templated_count", "impersonal_count",
    "topic_entropy", "novelty_rate", "prada_w", "gap_cv", "regularity", "hour_entropy",
    "top_area", "areas_seen", "repeat_share",
    # issue 14: value transferred, and the shapes of legitimate uses
    "output_tokens_distinct", "elicited_tokens", "self_contained_count", "answer_ratio", "fixed_instruction_share",
    "instruction_read_share",
    "probe_count", "benchmark_count", "temp0_count", "resent_share",
    # a bounded set of requests and whole passes over it (evaluation re-runs)
    "prompt_space", "pass_share", "slot_novelty", "slot_word_novelty",
)
# The same features for an account's templated sub-stream (extraction hidden in a busy,
# otherwise organic account, such as a reseller's), judged as if it were an account of its own.
SUBSTREAM_PREFIX = "sub_"
SUBSTREAM_MIN_QUERIES = 200      # accounts this busy are searched for a sub-stream
SUBSTREAM_MIN_SIZE = 20          # queries in the sub-stream
SUBSTREAM_MAX_SHARE = 0.8        # above this the sub-stream is the account, judged as such already
FEATURES = BASE_FEATURES + tuple(SUBSTREAM_PREFIX + f for f in BASE_FEATURES) + ("substream_share",)
# End users: an account that names its own end users (a reseller or platform passing OpenAI's
# ``safety_identifier``/``user``) has each busy end user scored as a subject of its own, under a
# row keyed ``account + END_USER_SEP + end user``. A 5 % extraction stream of organic-looking
# prompts is invisible inside a reseller's traffic and plain once it is separated out.
END_USER_SEP = "\x1f"
END_USER_MIN_QUERIES = 20


def end_user_key(account: str, end_user: str) -> str:
    return f"{account}{END_USER_SEP}{end_user}"


def split_end_user_key(key: str) -> tuple[str, str | None]:
    """``(account, end_user)`` of a feature row's key (``end_user`` None for an account's own row)."""
    account, sep, end_user = key.partition(END_USER_SEP)
    return (account, end_user) if sep else (key, None)


def end_user_streams(frame: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """An account's end users with at least ``END_USER_MIN_QUERIES`` queries each, when it names
    two or more (one end user only is the account itself), largest first."""
    if "end_user" not in frame or len(frame) < END_USER_MIN_QUERIES:
        return []
    users = frame["end_user"]
    named = users.notna()
    if not named.any():
        return []
    counts = users[named].value_counts()
    if len(counts) < 2:
        return []
    busy = counts[counts >= END_USER_MIN_QUERIES]
    return [(str(u), frame[users == u]) for u in sorted(busy.index, key=lambda u: (-int(busy[u]), str(u)))]


def features_with_end_users(account: str, frame: pd.DataFrame, *, max_tokens_cap: int,
                            end_users: bool = True) -> list[tuple[str, dict[str, Any]]]:
    """The account's feature row, then one row per busy end user (see ``end_user_streams``)."""
    rows = [(account, account_features(frame, max_tokens_cap=max_tokens_cap))]
    if end_users:
        for user, sub in end_user_streams(frame):
            feats = account_features(sub, max_tokens_cap=max_tokens_cap)
            feats["template_keys"] = feats["script_keys"] = []  # links between accounts come from accounts' own rows
            rows.append((end_user_key(account, user), feats))
    return rows


def _entropy_bits(counts: np.ndarray) -> float:
    """Miller-Madow bias-corrected Shannon entropy (bits) of a histogram."""
    total = counts.sum()
    if total <= 1:
        return 0.0
    p = counts[counts > 0] / total
    h = float(-(p * np.log2(p)).sum())
    return h + (len(p) - 1) / (2.0 * total * math.log(2))


def _even_sample(n: int, k: int) -> np.ndarray:
    return np.arange(n) if n <= k else np.unique(np.linspace(0, n - 1, k).astype(np.int64))


def elicitation_text(prompt: str, system: Any) -> str:
    """Lowercased prompt plus system prompt, ends kept: demands sit before or after the payload."""
    body = prompt if len(prompt) <= 1200 else prompt[:800] + "\n" + prompt[-400:]
    return (body + ("\n" + system[:500] if isinstance(system, str) and system else "")).lower()


def _elicitation_text(prompts: list[str], systems: list[Any]) -> list[str]:
    return [elicitation_text(p, s) for p, s in zip(prompts, systems)]


def account_features(frame: pd.DataFrame, *, max_tokens_cap: int = DEFAULT_MAX_TOKENS_CAP,
                     substreams: bool = True) -> dict[str, Any]:
    """Numeric features of one account (see ``FEATURES``) plus its recurring template keys."""
    if not frame["t"].is_monotonic_increasing:      # (most stores hold an account's events in time order)
        frame = frame.sort_values("t", kind="stable")
    t = frame["t"].to_numpy(dtype=np.float64)
    systems = frame["system"].tolist()
    # A request with no user turn carries its prompt in the system message (stores written
    # before the event schema read it so hold an empty prompt): that text is the prompt.
    prompts = [p if isinstance(p, str) and p.strip() else (s[:PROMPT_CHARS] if isinstance(s, str) else "")
               for p, s in zip(frame["prompt"].tolist(), systems)]
    # A request hidden in an encoding (base64, ROT13, leetspeak) is read decoded (obfuscation.reveal).
    revealed: dict[str, str] = {}
    read = [revealed[p] if p in revealed else revealed.setdefault(p, reveal(p)) for p in prompts]
    decoded = np.fromiter((r != p for r, p in zip(read, prompts)), dtype=bool, count=len(prompts))
    prompts = read
    n = len(prompts)
    out: dict[str, Any] = {name: float("nan") for name in FEATURES}
    out["queries"] = float(n)
    if n == 0:
        out["template_keys"] = out["script_keys"] = []
        return out

    # Distinct requests (first occurrence): re-asking the same thing harvests nothing new. A request
    # is its prompt in its context: the same user turn under another system prompt (a persona) or
    # after other tool rounds (an agent's next step) asks for a different answer.
    n_messages = frame["n_messages"].fillna(0).to_numpy(dtype=np.int64)
    tools = frame["has_tools"].to_numpy(dtype=object) == True  # noqa: E712 (None-safe)
    first_index: dict[Any, int] = {}
    sends: dict[Any, int] = {}
    for i, key in enumerate(zip(prompts, systems, n_messages.tolist(), tools.tolist())):
        request = tx.request_key(*key)
        first_index.setdefault(request, i)
        sends[request] = sends.get(request, 0) + 1
    send_counts = np.fromiter(sends.values(), dtype=np.int64, count=len(sends))
    out["prompt_space"] = prompt_space(send_counts)
    out["pass_share"] = pass_share(send_counts)
    distinct_idx = np.fromiter(first_index.values(), dtype=np.int64, count=len(first_index))
    span_days = max(1.0, (t[-1] - t[0]) / 86400.0)
    completion = frame["completion_tokens"].to_numpy(dtype=np.float64)
    # Probes (jailbreak, leakage and refusal tests) are not value transferred: harvest counts the
    # other prompts only, so a security scan harvests nothing while extraction beside it still does.
    cue_text = CueTexts(_elicitation_text(prompts, systems))
    probe = probes.security_probe(cue_text, decoded)
    value_idx = distinct_idx[~probe[distinct_idx]]
    out["distinct_prompts"] = float(len(value_idx))
    # Deterministic re-asks (temperature 0, the same prompt again) return the same answer: an
    # evaluation re-run, not harvesting. Repeats at temperature > 0 sample new outputs, so they count.
    temperature = frame["temperature"].to_numpy(dtype=np.float64) if "temperature" in frame else np.full(n, np.nan)
    is_first = np.zeros(n, dtype=bool)
    is_first[distinct_idx] = True
    out["repeat_share"] = float(np.sum(~is_first & (temperature == 0.0)) / n)
    # Re-sends at any temperature: a bounded prompt set run more than once (evaluation re-runs).
    out["resent_share"] = float(np.sum(~is_first) / n)
    out["span_days"] = span_days
    out["distinct_per_day"] = len(value_idx) / span_days
    out["output_tokens_distinct"] = float(np.nansum(completion[value_idx]))
    out["output_tokens_per_day"] = out["output_tokens_distinct"] / span_days
    out["probe_count"] = float(probe.sum())
    out["benchmark_count"] = float(tx.benchmark_format(cue_text).sum())
    out["temp0_count"] = float(np.sum(temperature == 0.0))
    # Each answer is judged against its prompt: a request for n choices gets n answers, and its
    # completion tokens are theirs together (harvest above counts them all; the answer ratio, one).
    choices = (pd.to_numeric(frame["n_choices"], errors="coerce").to_numpy(dtype=np.float64)
               if "n_choices" in frame else np.ones(n))
    choices = np.where(np.isfinite(choices) & (choices >= 1), choices, 1.0)
    _value_features(out, prompts, systems, completion / choices, value_idx)

    # Elicitation and usage cues (counts over all queries; rates are judged later).
    cot, grading = tx.has(tx.COT_ELICITATION, cue_text), tx.has(tx.GRADING, cue_text)
    identity, datagen = tx.has(tx.IDENTITY_PROBE, cue_text), tx.has(tx.DATA_GENERATION, cue_text)
    # A security probe asks for nothing of value (a leakage probe names the system prompt, a
    # jailbreak a harmful output): its cues are probing, not elicitation (as it is not harvest).
    cot, grading, identity, datagen = (cue & ~probe for cue in (cot, grading, identity, datagen))
    out["cot_count"] = float(cot.sum())
    out["grading_count"] = float(grading.sum())
    out["identity_count"] = float(identity.sum())
    out["datagen_count"] = float(datagen.sum())
    out["logprobs_count"] = float(np.sum(frame["logprobs"].to_numpy(dtype=object) == True))  # noqa: E712 (None-safe)
    out["tools_count"] = float(tools.sum())
    # Tools defined, yet nothing but the system prompt and user turns in the history: no tool
    # result ever came back, so the tools were never really run (a one-shot trajectory).
    has_system = np.fromiter((isinstance(x, str) for x in systems), dtype=bool, count=n)
    n_turns = frame["n_turns"].fillna(1).to_numpy(dtype=np.int64)
    open_loop = tools & (n_messages <= n_turns + has_system)
    out["open_loop_tools_count"] = float(np.sum(open_loop))
    # Privileged content harvested: output tokens on distinct prompts that ask for it (the value of
    # a slow, sustained elicitation campaign, whose per-day volume is organic).
    elicited = (cot | grading | identity | datagen | open_loop)[value_idx]
    out["elicited_tokens"] = float(np.nansum(completion[value_idx][elicited]))
    max_tokens = frame["max_tokens"].to_numpy(dtype=np.float64)
    out["near_cap_count"] = float(np.sum(max_tokens >= 0.9 * max_tokens_cap))
    single = n_turns <= 1
    out["single_turn_count"] = float(np.sum(single))
    out["orphan_followup_count"] = float(np.sum(single & (n_messages <= 1 + has_system) & tx.followup_opening(prompts)))
    out["impersonal_count"] = float(n - tx.human_style(prompts).sum())

    # Template regularity: near-duplicate structure (MinHash + LSH over masked edge shingles)
    # among *distinct* prompts, so re-sending one prompt is not mistaken for a template; a
    # query counts as templated when its prompt is in a group of TEMPLATE_MIN_GROUP or more.
    distinct_prompts = [prompts[i] for i in distinct_idx]
    signatures = minhash_signatures([template_shingles(p) for p in distinct_prompts])
    keys = band_keys(signatures)
    labels = template_groups(keys)
    sizes = np.bincount(labels)
    templated_distinct = (sizes[labels] >= TEMPLATE_MIN_GROUP) & (keys != 0).any(axis=1)
    position = {p: k for k, p in enumerate(distinct_prompts)}
    query_distinct = np.fromiter((position[p] for p in prompts), dtype=np.int64, count=n)
    out["templated_count"] = float(templated_distinct[query_distinct].sum())
    template_keys: list[int] = []
    if templated_distinct.any():
        # Band keys seen in at least 3 of the account's distinct prompts: its recurring templates.
        values, counts = np.unique(keys[templated_distinct].ravel(), return_counts=True)
        keep = (counts >= TEMPLATE_MIN_GROUP) & (values != 0)
        values, counts = values[keep], counts[keep]
        template_keys = values[np.argsort(-counts, kind="stable")[:32]].view(np.int64).tolist()
    out["template_keys"] = template_keys
    # Band keys seen in at least 2 of the account's distinct prompts, templated or not: a small
    # account's share of a script dealt over many accounts (read by the queue-group test only;
    # the pairwise links use the recurring templates above).
    # An account too small for any band to recur fills up with its smallest band keys (a bottom-k
    # sample: two accounts that share many bands keep some of the same ones).
    values, counts = np.unique(keys.ravel(), return_counts=True)
    nonzero = values != 0
    order = np.lexsort((values, -np.minimum(counts, 2)))   # recurring first, then by key value
    order = order[nonzero[order]][:SCRIPT_KEYS]
    out["script_keys"] = values[order].view(np.int64).tolist()

    # Coverage: breadth over capability areas. Areas are read once, for the first
    # BREADTH_SAMPLE * BREADTH_WINDOWS distinct prompts; breadth is the mean entropy over windows
    # of BREADTH_SAMPLE consecutive distinct prompts, since entropy grows with sample size and
    # organic users revisit their interests (their windows stay narrow even when their whole
    # history is broad).
    head = distinct_idx[: BREADTH_SAMPLE * BREADTH_WINDOWS]
    areas = tx.area_ids([prompts[i] for i in head])
    area_counts = np.bincount(areas, minlength=len(tx.AREA_LIST)).astype(np.float64)
    out["areas_seen"] = float((area_counts > 0).sum())
    out["top_area"] = float(np.argmax(area_counts))
    if len(head) >= BREADTH_SAMPLE:
        entropies = [_entropy_bits(np.bincount(areas[k:k + BREADTH_SAMPLE], minlength=len(tx.AREA_LIST))
                                   .astype(np.float64))
                     for k in range(0, len(areas) - BREADTH_SAMPLE + 1, BREADTH_SAMPLE)]
        out["topic_entropy"] = float(np.mean(entropies))
    # How often prompts break new ground, and PRADA's distance statistic: informational, so only
    # for accounts with enough distinct prompts for them to mean something.
    if len(distinct_idx) >= EMBEDDING_MIN_DISTINCT:
        sample_prompts = [prompts[i] for i in distinct_idx[_even_sample(len(distinct_idx), COVERAGE_SAMPLE)]]
        if os.environ.get("DISTILLGUARD_EMBEDDER", "hashing") == "minilm":
            emb = tx.minilm_embeddings(sample_prompts)
        else:
            words = tx.embedding_words(sample_prompts)
            emb = tx.hashed_embeddings(sample_prompts, drop=tx.frequent_words(sample_prompts, words=words),
                                       words=words)
        sims = emb @ emb.T
        np.fill_diagonal(sims, -1.0)
        # Row i's best over the prompts before it (j < i): the strict lower triangle, row maxima.
        m = len(sample_prompts)
        earlier_best = np.where(np.tri(m, m, -1, dtype=bool), sims, -np.inf).max(axis=1)[1:]
        out["novelty_rate"] = float(np.mean(earlier_best < NOVELTY_SIMILARITY))
        # PRADA (Juuti et al. 2019): distances from each query to its nearest earlier query.
        dists = np.sqrt(np.clip(2.0 - 2.0 * earlier_best, 0.0, None))
        if np.ptp(dists) > 1e-9:
            out["prada_w"] = float(stats.shapiro(dists[:500]).statistic)

    # Cadence: regular spacing, and activity round the clock.
    if n >= 10:
        gaps = np.diff(t)
        mean_gap = gaps.mean()
        if mean_gap > 0:
            cv = float(gaps.std() / mean_gap)
            out["gap_cv"] = cv
            out["regularity"] = -math.log10(max(cv, 1e-3))
        hours = ((t % 86400.0) // 3600.0).astype(np.int64)
        out["hour_entropy"] = _entropy_bits(np.bincount(hours, minlength=24).astype(np.float64))

    # The templated sub-stream, as an account of its own: every query whose prompt is in a
    # template group (a script hidden in a busy account often speaks through several templates at
    # once, e.g. an evolution loop's rewrite frames beside its reasoning asks).
    if substreams and n >= SUBSTREAM_MIN_QUERIES and templated_distinct.any():
        mask = templated_distinct[query_distinct]
        if SUBSTREAM_MIN_SIZE <= mask.sum() <= SUBSTREAM_MAX_SHARE * n:
            sub = account_features(frame.iloc[np.flatnonzero(mask)], max_tokens_cap=max_tokens_cap, substreams=False)
            for name in BASE_FEATURES:
                out[SUBSTREAM_PREFIX + name] = sub[name]
            out["substream_share"] = float(mask.sum() / n)
    return out


def answer_ratios(completion: np.ndarray, prompt_chars: np.ndarray) -> np.ndarray:
    """log2 of (answer tokens + 1) / (prompt tokens + 1), prompt tokens estimated as chars / 4."""
    return np.log2((np.nan_to_num(completion, nan=0.0) + 1.0) / (prompt_chars / 4.0 + 1.0))


def _value_features(out: dict[str, Any], prompts: list[str], systems: list[Any], completion: np.ndarray,
                    distinct_idx: np.ndarray) -> None:
    """What the traffic is worth as training data, and whether one fixed instruction explains it.

    * ``self_contained_count``: queries whose prompt gives an instruction and brings no material
      of its own (a generative request, rather than work on the caller's text, code or records);
    * ``answer_ratio``: the geometric mean, over distinct prompts, of answer tokens per prompt
      token (system prompt included), as log2 of (answer + 1) / (prompt + 1);
    * ``fixed_instruction_share``: the share of distinct prompts whose part outside the account's
      frame (words in half its prompts or more) gives no instruction of its own: near 1 for one
      fixed instruction over payloads the application brings (a catalogue, a labelling queue),
      low for many distinct instructions behind one frame (a harvester's tasks) or none.
    """
    n = len(prompts)
    if len(distinct_idx) == 0:
        out["self_contained_count"] = 0.0
        return
    lowered = [prompts[i][:4000].lower() for i in distinct_idx]
    contained = tx.self_contained(lowered)
    # Queries take their distinct prompt's value (a probe's repeats count as not self-contained).
    by_prompt: dict[str, int] = {prompts[i]: k for k, i in enumerate(distinct_idx)}
    query_pos = np.fromiter((by_prompt.get(p, -1) for p in prompts), dtype=np.int64, count=n)
    out["self_contained_count"] = float(np.sum(contained[query_pos[query_pos >= 0]]))
    chars = np.fromiter((min(len(prompts[i]), PROMPT_CHARS)
                         + (min(len(systems[i]), SYSTEM_CHARS) if isinstance(systems[i], str)
                            and systems[i] != prompts[i] else 0) for i in distinct_idx),
                        dtype=np.float64, count=len(distinct_idx))
    answered = np.isfinite(completion[distinct_idx])
    if answered.any():
        out["answer_ratio"] = float(np.mean(answer_ratios(completion[distinct_idx][answered], chars[answered])))
    if len(distinct_idx) >= INSTRUCTION_MIN_DISTINCT:
        sample = _even_sample(len(distinct_idx), INSTRUCTION_SAMPLE)
        texts = [lowered[i] for i in sample]
        frame = tx.frame_words([tx.prompt_words(t) for t in texts])
        varying = tx.varying_instruction(tx.instruction_words(texts, frame), frame)
        # Prompts holding no instruction word or English function word we know (another language):
        # their instructions are not read, so one fixed instruction cannot be told from many.
        unread = np.fromiter((tx.READABLE_WORDS.isdisjoint(tx.prompt_words(t)) for t in texts), dtype=bool,
                             count=len(texts))
        out["fixed_instruction_share"] = float(1.0 - varying.mean())
        out["instruction_read_share"] = float(1.0 - unread.mean())
        slots = [frozenset(_TOKEN.findall(t[:600])) - frame for t in texts]
        out["slot_novelty"] = late_novelty(slots)
        # Words only: a record's numbers (an SKU, a wattage) are new in every request of a catalogue.
        out["slot_word_novelty"] = late_novelty([frozenset(w for w in s if not any(c.isdigit() for c in w))
                                                 for s in slots])


# Words and numbers: a slot's values are often numbers (a count, a grade, a problem's parameters).
_TOKEN = re.compile(r"[a-z0-9']+")


def late_novelty(token_sets: list[frozenset[str]]) -> float:
    """The share of the later half of an account's distinct prompts (in time order) that bring a
    token outside its frame that no earlier prompt had. Near 0 when a fixed frame's slots take a
    bounded set of values (a syllabus's topics, levels and counts, all seen early and then
    reused); a generator over open topics (a web page's subject, an encyclopaedia's titles) and a
    harvester's tasks keep bringing new words and numbers."""
    half = len(token_sets) // 2
    if half == 0:
        return float("nan")
    seen: set[str] = set()
    new = 0
    for k, tokens in enumerate(token_sets):
        if k >= half and not tokens <= seen:
            new += 1
        seen |= tokens
    return new / (len(token_sets) - half)


def prompt_space(sends: np.ndarray) -> float:
    """How many distinct requests the account's source holds, estimated from how often it sent
    each one (Chao1, bias-corrected: distinct + f1 (f1 - 1) / (2 (f2 + 1)), f1 and f2 the requests
    sent once and twice). A benchmark re-run sends each item several times (f1 = 0: the space is
    what was sent); a generator over a few slot values repeats itself by chance; a harvester's
    requests are all new (f1 = distinct: the space is far beyond what was sent)."""
    if len(sends) == 0:
        return 0.0
    f1, f2 = float(np.sum(sends == 1)), float(np.sum(sends == 2))
    return float(len(sends) + f1 * (f1 - 1.0) / (2.0 * (f2 + 1.0)))


def pass_share(sends: np.ndarray) -> float:
    """The share of distinct requests sent ``c`` or ``c + 1`` times, for the ``c >= 2`` that makes
    it largest (0 when none was sent twice): 1 for whole passes over one item set (a benchmark run
    r times sends every item r times) and all through a third or later pass (its items sent r - 1
    or r times so far: a pass in progress is not read as unequal counts); a second pass in
    progress counts only the items already sent twice; low for a generator whose requests repeat
    by chance, or a re-sampler that draws several traces per item unequally."""
    counts = np.bincount(sends)
    if len(sends) == 0 or len(counts) <= 2:
        return 0.0
    pairs = counts[2:] + np.append(counts[3:], 0)
    return float(pairs.max() / len(sends))


def features_frame(rows: list[dict[str, Any]], accounts: list[str]) -> pd.DataFrame:
    """Assemble per-account feature dicts into one frame indexed by account, columns in
    ``FEATURES`` order (a feature absent from every row is NaN)."""
    return pd.DataFrame(rows, index=pd.Index(accounts, name="account"), columns=list(FEATURES))
