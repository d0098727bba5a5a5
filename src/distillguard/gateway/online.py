"""Online scoring: the scan's signals, kept per account in bounded sketches, updated per request.

Each request is read once (:func:`read_request`: cues, style, area, template band keys, a prompt
hash); the account's :class:`AccountState` folds it into fixed-size counters and sketches:

* a Bloom filter of prompt hashes (repeats, and the distinct-prompt count from its fill),
* exact send counts per request digest (:mod:`distillguard.gateway.sends`: from the account's
  first re-send on, the distinct requests, ``prompt_space`` and ``pass_share`` as the scan counts
  them; bounded),
* a ring of the band keys of the last ``RING`` distinct prompts (templates: a prompt is templated
  when it shares a band with two or more of them, as in the batch scan's groups of three),
* topic-breadth windows of ``BREADTH_SAMPLE`` distinct prompts, hour-of-day and inter-arrival
  moments (Welford).

:meth:`AccountState.features` rebuilds the scan's feature row (``BASE_FEATURES``), so the live
verdict is the batch verdict's test, against the same baseline, at the same false-positive rate.
State is a few numpy arrays and one bytearray, under 8 KB an account, plus its send counts: 8
bytes a distinct request until its first re-send (at most 2,048, then freed as unknown), 10 bytes
a slot after it (at most ``EVAL_MAX_ITEMS`` requests: about 330 KB at the bound, then freed).
"""

from __future__ import annotations

import math
import sys
from array import array
from dataclasses import dataclass
from typing import Any

import numpy as np

from distillguard.detect import probes
from distillguard.detect import text as tx
from distillguard.detect.cue_index import CueText
from distillguard.detect.features import (BREADTH_SAMPLE, BREADTH_WINDOWS, PROMPT_CHARS, SYSTEM_CHARS,
                                          TEMPLATE_MIN_GROUP, _entropy_bits, elicitation_text)
from distillguard.detect.hydra import SLOT_S
from distillguard.detect.minhash import band_keys32_one, template_shingles
from distillguard.detect.obfuscation import reveal
from distillguard.detect.scoring import Verdict
from distillguard.events.schema import PromptView
from distillguard.gateway.sends import SendCounts, request_key

N_AREAS = len(tx.AREA_LIST)
BLOOM_BITS = 8192           # 1 KB
BLOOM_HASHES = 4
RING = 24                   # distinct prompts whose template bands are remembered (1.5 KB)
N_BANDS = 16

# Slots of the counter vector.
_NAMES = ("queries", "distinct_seen", "repeats0", "out_tokens_distinct", "cot", "grading", "identity", "datagen",
          "logprobs", "tools", "open_loop_tools", "orphan_followup", "near_cap", "single_turn", "templated",
          "impersonal", "gap_n", "gap_mean", "gap_m2", "first_t", "last_t", "windows", "window_entropy_sum",
          "window_fill", "areas_distinct", "ring_next", "ring_fill",
          "self_contained", "probe", "benchmark", "temperature0", "ratio_sum", "ratio_n", "probes_distinct", "elicited_tokens",
          "instr_judged", "instr_fixed", "instr_unread")
S = {name: i for i, name in enumerate(_NAMES)}
_HOURS = len(_NAMES)
_AREAS = _HOURS + 24
_WINDOW = _AREAS + N_AREAS
_SIZE = _WINDOW + N_AREAS


SLOT_RING = 32              # recent ten-minute slots kept for co-activity links
WORD_BUCKETS = 256          # hashed words for the live fixed-instruction share (a 32-byte bitmap)
FRAME_PROMPTS = 20          # distinct prompts whose words define an account's frame live


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What one request contributes to its account's state: computed once per request, and plain
    data only (ints, bools, bytes, tuples, one optional string), so it can be serialised and
    shipped to other replicas (``dataclasses.asdict``; ``from_dict`` reads it back)."""

    bloom_bits: tuple[int, ...]
    keys: tuple[int, ...]     # N_BANDS uint32 template band keys (0: too short to be a template)
    cot: bool
    grading: bool
    identity: bool
    datagen: bool
    logprobs: bool
    tools: bool
    open_loop_tools: bool
    orphan_followup: bool
    near_cap: bool
    single_turn: bool
    impersonal: bool
    temperature0: bool
    area: int
    end_user: str | None = None   # the caller's own end user (request safety_identifier/user)
    self_contained: bool = False  # an instruction and no material of the caller's own
    probe: bool = False           # a security probe (jailbreak, leakage, refusal test)
    benchmark: bool = False       # formatted as a benchmark item
    prompt_chars: int = 0         # prompt + system characters (as the scan reads them), for the answer ratio
    word_bits: bytes = b""        # WORD_BUCKETS-bit bitmap of the prompt's hashed words
    instruction_bits: bytes = b""  # ... of those that are instruction words
    instruction_read: bool = True  # the prompt has an instruction word we know (else: another language, a bare payload)

    @property
    def elicited(self) -> bool:
        """Asks for privileged content (its answer counts toward privileged-content harvest)."""
        return self.cot or self.grading or self.identity or self.datagen or self.open_loop_tools

    @classmethod
    def from_dict(cls, data: dict) -> "RequestFacts":
        """The inverse of ``dataclasses.asdict`` (tuples and bytes restored from JSON-like lists)."""
        fields = dict(data)
        fields["bloom_bits"] = tuple(int(b) for b in fields["bloom_bits"])
        fields["keys"] = tuple(int(k) for k in fields["keys"])
        for name in ("word_bits", "instruction_bits"):
            value = fields.get(name, b"")
            fields[name] = bytes.fromhex(value) if isinstance(value, str) else bytes(value)
        return cls(**fields)


def _word_bitmaps(words: frozenset[str]) -> tuple[bytes, bytes]:
    every = instr = 0
    for w in words:
        bit = 1 << (tx.stable_hash(w) % WORD_BUCKETS)
        every |= bit
        if w in tx.VARYING_INSTRUCTION_WORDS:
            instr |= bit
    size = WORD_BUCKETS // 8
    return every.to_bytes(size, "little"), instr.to_bytes(size, "little")


_KEYS: dict[tuple[int, ...], tuple[int, ...]] = {}
KEYS_CACHED = 8192          # shingle sets whose band keys are kept (a few MB)


def _template_keys(prompt: str) -> tuple[int, ...]:
    """The prompt's template band keys (``band_keys32_one`` of its shingles), cached by the exact
    shingle set: prompts of one template with masked numbers, and re-sends, share it (a third of
    lab requests), and the keys are a fixed function of the set."""
    shingles = tuple(template_shingles(prompt))
    keys = _KEYS.get(shingles)
    if keys is None:
        if len(_KEYS) >= KEYS_CACHED:
            _KEYS.clear()
        keys = _KEYS[shingles] = tuple(band_keys32_one(shingles).tolist())
    return keys


def read_request(view: PromptView, max_tokens_cap: int) -> RequestFacts:
    prompt = view.prompt_text or ""
    if not prompt.strip() and view.system_prompt:
        prompt = view.system_prompt[:PROMPT_CHARS]     # as the scan reads a system-message-only request
    read = reveal(prompt)                              # as the scan reads an encoded request (decoded)
    decoded, prompt = read != prompt, read
    h = tx.request_digest(prompt, view.system_prompt, view.n_messages, view.has_tools)   # the prompt in its context
    bits = tuple((h >> (16 * i)) & (BLOOM_BITS - 1) for i in range(BLOOM_HASHES))
    cue = CueText(elicitation_text(prompt, view.system_prompt))    # anchors found once, for every cue
    keys = _template_keys(prompt)
    probe = probes.security_probe_one(cue, decoded)
    privileged = not probe       # a probe's cues are probing, not elicitation (as the scan counts them)
    lowered = prompt[:PROMPT_CHARS].lower()
    words = tx.prompt_words(lowered)
    word_bits, instruction_bits = _word_bitmaps(words)
    system = view.system_prompt
    chars = min(len(prompt), PROMPT_CHARS) + (min(len(system), SYSTEM_CHARS) if system and system != prompt else 0)
    has_system = view.system_prompt is not None
    single = view.n_turns <= 1
    followup = tx.is_followup(prompt)
    return RequestFacts(
        bloom_bits=bits, keys=keys, cot=privileged and cue.has(tx.COT_ELICITATION),
        grading=privileged and cue.has(tx.GRADING), identity=privileged and cue.has(tx.IDENTITY_PROBE),
        datagen=privileged and cue.has(tx.DATA_GENERATION), logprobs=view.logprobs,
        tools=view.has_tools,
        open_loop_tools=view.has_tools and view.n_messages <= view.n_turns + has_system,
        orphan_followup=single and view.n_messages <= 1 + has_system and followup,
        near_cap=view.max_tokens is not None and view.max_tokens >= 0.9 * max_tokens_cap,
        single_turn=single, impersonal=not tx.is_human(prompt),
        temperature0=view.temperature == 0.0, area=tx.area_index(prompt), end_user=view.end_user,
        self_contained=tx.is_self_contained(lowered), probe=probe,
        benchmark=tx.benchmark_format_one(cue), prompt_chars=chars,
        word_bits=word_bits, instruction_bits=instruction_bits,
        instruction_read=not tx.READABLE_WORDS.isdisjoint(words))


# Counters a request adds one to when its fact holds (fact name == slot name).
_FLAG_SLOTS = tuple((name, S[name]) for name in ("cot", "grading", "identity", "datagen", "logprobs", "tools",
                                                 "open_loop_tools", "orphan_followup", "near_cap", "single_turn",
                                                 "impersonal", "probe", "benchmark", "temperature0"))
_Q, _GAP_N, _GAP_MEAN, _GAP_M2, _FIRST, _LAST = (S[k] for k in ("queries", "gap_n", "gap_mean", "gap_m2", "first_t",
                                                                 "last_t"))


class AccountState:
    """Bounded per-account state; ``update`` per request, ``features`` rebuilds the scan's row.

    Counters live in an ``array('d')`` (compact like numpy, but fast for the scalar updates a
    request makes); the template ring is a small numpy matrix compared in one operation.
    """

    __slots__ = ("v", "bloom", "ring", "verdict", "elevated", "scored_at", "template_keys", "attrs", "frame",
                 "slots", "behaviour", "sends")

    def __init__(self, counts: bool = True) -> None:
        self.v = array("d", bytes(8 * _SIZE))
        self.bloom = bytearray(BLOOM_BITS // 8)
        self.ring = np.zeros((RING, N_BANDS), dtype=np.uint32)
        self.verdict: Verdict | None = None
        self.elevated = False         # the last verdict passes at a looser false-positive rate
        self.scored_at = 0.0          # query count at the last full verdict
        self.template_keys: tuple[int, ...] = ()   # recurring template bands (for hydra links)
        self.attrs: frozenset[int] = frozenset()   # hashed link attributes (hydra)
        # The account's frame (words in half its first FRAME_PROMPTS distinct prompts): while it is
        # being learnt, per-bucket word counts and those prompts' instruction bitmaps; then one bitmap.
        self.frame: tuple[bytearray, list[bytes]] | int = (bytearray(WORD_BUCKETS), [])
        self.slots = array("d")        # the last SLOT_RING ten-minute activity slots (behavioural links)
        self.behaviour: tuple[float, Any] | None = None   # (queries, what hydra's behaviour link reads): a cache
        # Send counts per request (gateway.sends; None: no request yet, False: unknown for good,
        # or not kept: ``counts=False``, as for end users).
        self.sends: SendCounts | None | bool = None if counts else False

    @property
    def queries(self) -> int:
        return int(self.v[_Q])

    def _bloom_add(self, bits: tuple[int, ...]) -> bool:
        """Add to the Bloom filter; True when the prompt was (probably) seen before."""
        bloom = self.bloom
        seen = True
        for b in bits:
            byte, mask = b >> 3, 1 << (b & 7)
            if not bloom[byte] & mask:
                seen = False
                bloom[byte] |= mask
        return seen

    def update(self, facts: RequestFacts, ts: float) -> tuple[bool, tuple[int, ...]]:
        """Fold one request in. Returns whether the prompt was seen before, and the template bands
        that just became recurring in this account (for hydra links)."""
        v = self.v
        n = v[_Q]
        if n == 0:
            v[_FIRST] = ts
        else:
            gap = max(0.0, ts - v[_LAST])
            k = v[_GAP_N] + 1
            delta = gap - v[_GAP_MEAN]
            v[_GAP_MEAN] += delta / k
            v[_GAP_M2] += delta * (gap - v[_GAP_MEAN])
            v[_GAP_N] = k
        if ts > v[_LAST]:
            v[_LAST] = ts
        v[_Q] = n + 1
        self.note_slot(ts)
        v[_HOURS + int((ts % 86400.0) // 3600.0)] += 1
        for name, slot in _FLAG_SLOTS:
            if getattr(facts, name):
                v[slot] += 1
        seen = self._bloom_add(facts.bloom_bits)
        self._count_send(facts.bloom_bits, seen)
        if seen and facts.temperature0:
            v[S["repeats0"]] += 1
        if facts.self_contained and not facts.probe:
            v[S["self_contained"]] += 1
        new_recurring: tuple[int, ...] = ()
        if any(facts.keys):
            keys = np.array(facts.keys, dtype=np.uint32)
            fill = int(v[S["ring_fill"]])
            ring = self.ring[:fill]
            same = ring == keys
            if not all(facts.keys):
                same &= keys != 0
            matches = same.any(axis=1)
            matched = np.count_nonzero(matches)
            # A new prompt joins a group of TEMPLATE_MIN_GROUP with that many minus one earlier
            # prompts; a repeat finds its own first copy in the ring too.
            if matched >= (TEMPLATE_MIN_GROUP if seen else TEMPLATE_MIN_GROUP - 1):
                v[S["templated"]] += 1
            if not seen:
                if matched + 1 >= TEMPLATE_MIN_GROUP:
                    per_band = (ring[matches] == keys[None, :]).sum(axis=0) + 1
                    recurring = keys[(per_band >= TEMPLATE_MIN_GROUP) & (keys != 0)].tolist()
                    fresh = tuple(sorted(set(recurring) - set(self.template_keys)))
                    if fresh:
                        self.template_keys = (self.template_keys + fresh[:2])[-4:]
                        new_recurring = fresh[:2]
                slot = int(v[S["ring_next"]])
                self.ring[slot] = keys
                v[S["ring_next"]] = (slot + 1) % RING
                v[S["ring_fill"]] = min(RING, fill + 1)
        if not seen:
            v[S["distinct_seen"]] += 1
            if facts.probe:
                v[S["probes_distinct"]] += 1
            elif facts.word_bits:
                self._judge_instruction(facts.word_bits, facts.instruction_bits)
                v[S["instr_unread"]] += not facts.instruction_read
            if v[S["areas_distinct"]] < BREADTH_SAMPLE * BREADTH_WINDOWS:
                v[S["areas_distinct"]] += 1
                v[_AREAS + facts.area] += 1
                v[_WINDOW + facts.area] += 1
                v[S["window_fill"]] += 1
                if v[S["window_fill"]] >= BREADTH_SAMPLE:
                    window = np.frombuffer(v, dtype=np.float64)[_WINDOW:_WINDOW + N_AREAS]
                    v[S["window_entropy_sum"]] += _entropy_bits(window.copy())
                    v[S["windows"]] += 1
                    window[:] = 0
                    v[S["window_fill"]] = 0
        return seen, new_recurring

    def _count_send(self, bits: tuple[int, ...], seen: bool) -> None:
        """Count the send per request digest (exact; ``seen``, the Bloom filter's word, is only a
        hint: a request it has not seen is certainly new)."""
        sends = self.sends
        if sends is False:
            return
        if sends is None:
            sends = self.sends = SendCounts()
        if not sends.add(request_key(bits, BLOOM_BITS), seen):
            self.sends = False

    def _judge_instruction(self, words: bytes, instructions: bytes) -> None:
        """Does this distinct prompt give an instruction outside the account's frame? (The live
        fixed-instruction share; the frame is learnt from the first FRAME_PROMPTS prompts, which
        are then judged against it too.)"""
        v = self.v
        frame = self.frame
        if isinstance(frame, int):
            v[S["instr_judged"]] += 1
            v[S["instr_fixed"]] += (int.from_bytes(instructions, "little") & ~frame) == 0
            return
        counts, pending = frame
        every = int.from_bytes(words, "little")
        while every:
            low = every & -every
            counts[low.bit_length() - 1] += 1
            every ^= low
        pending.append(instructions)
        if len(pending) < FRAME_PROMPTS:
            return
        bitmap = 0
        for bit, c in enumerate(counts):
            if c >= 0.5 * len(pending):
                bitmap |= 1 << bit
        v[S["instr_judged"]] += len(pending)
        v[S["instr_fixed"]] += sum((int.from_bytes(instr, "little") & ~bitmap) == 0 for instr in pending)
        self.frame = bitmap

    def note_slot(self, ts: float) -> None:
        """Remember the request's ten-minute slot (the last ``SLOT_RING`` distinct ones)."""
        slot = float(ts // SLOT_S)
        slots = self.slots
        if slots and slots[-1] == slot:
            return
        slots.append(slot)
        if len(slots) > SLOT_RING:
            del slots[0]

    def add_output(self, completion_tokens: int, repeat: bool, prompt_chars: int | None = None,
                   probe: bool = False, elicited: bool = False, choices: int = 1) -> None:
        """Output tokens of an answered request (counted toward harvest when the prompt was new and
        not a security probe, toward privileged-content harvest when it ``elicited``; with
        ``prompt_chars``, toward the answer-length ratio too: each of its ``choices`` answers
        against its prompt, as the scan reads a request's ``n``)."""
        if repeat or probe:
            return
        if completion_tokens > 0:
            self.v[S["out_tokens_distinct"]] += completion_tokens
            if elicited:
                self.v[S["elicited_tokens"]] += completion_tokens
        if prompt_chars is not None:
            # detect.features.answer_ratios for one answer, bit for bit (numpy's log2 on a scalar:
            # no arrays built per request)
            answer = max(0, completion_tokens) / max(1, choices)
            self.v[S["ratio_sum"]] += float(np.log2((answer + 1.0) / (prompt_chars / 4.0 + 1.0)))
            self.v[S["ratio_n"]] += 1

    def distinct_estimate(self) -> float:
        """Distinct prompts: the Bloom filter's fill-based estimate (exact count while sparse)."""
        counted = self.v[S["distinct_seen"]]
        if counted <= 500:
            return counted
        fraction = min(_popcount(self.bloom) / BLOOM_BITS, 1.0 - 1e-9)
        return max(counted, -BLOOM_BITS / BLOOM_HASHES * math.log(1.0 - fraction))

    def rerun_in_progress(self) -> bool:
        """A whole pass of the account's earlier requests being re-sent (``SendCounts.rerun_in_progress``)."""
        return isinstance(self.sends, SendCounts) and self.sends.rerun_in_progress()

    def features(self) -> dict[str, float]:
        """The scan's feature row; with send counts (an account that re-sends, within bounds), the
        distinct requests, ``prompt_space`` and ``pass_share`` as the scan counts them."""
        v = np.frombuffer(self.v, dtype=np.float64)
        sends = self.sends
        if not isinstance(sends, SendCounts) or not sends.resent:
            return features_of(v, self.distinct_estimate())
        distinct, space, passes = sends.reading()
        out = features_of(v, distinct)
        out["prompt_space"], out["pass_share"] = space, passes
        return out

    def memory_bytes(self) -> int:
        """Bytes held by this state (the containers and what they hold)."""
        frame = self.frame
        frame_bytes = sys.getsizeof(frame)
        if isinstance(frame, tuple):
            frame_bytes += sys.getsizeof(frame[0]) + sys.getsizeof(frame[1]) + sum(sys.getsizeof(b) for b in frame[1])
        return (frame_bytes + sys.getsizeof(self.slots) + sys.getsizeof(self) + sys.getsizeof(self.v) + sys.getsizeof(self.bloom)
                + sys.getsizeof(self.ring) + sys.getsizeof(self.template_keys) + 32 * len(self.template_keys)
                + sys.getsizeof(self.attrs) + 32 * len(self.attrs)
                + (self.sends.memory_bytes() if isinstance(self.sends, SendCounts) else 0))


def _popcount(bits: bytearray) -> int:
    return int.from_bytes(bits, "little").bit_count()


def features_of(v: np.ndarray, distinct: float) -> dict[str, float]:
    """The scan's feature row (``BASE_FEATURES``) from a counter vector."""
    nan = float("nan")
    n = float(v[S["queries"]])
    span_days = max(1.0, (v[S["last_t"]] - v[S["first_t"]]) / 86400.0)
    resent = max(0.0, 1.0 - distinct / n) if n else 0.0                # re-sends at any temperature
    distinct = max(0.0, distinct - float(v[S["probes_distinct"]]))    # probes harvest nothing
    out = {"queries": n, "distinct_prompts": distinct, "span_days": span_days,
           "distinct_per_day": distinct / span_days,
           "output_tokens_distinct": float(v[S["out_tokens_distinct"]]),
           "elicited_tokens": float(v[S["elicited_tokens"]]),
           "output_tokens_per_day": float(v[S["out_tokens_distinct"]]) / span_days,
           "repeat_share": float(v[S["repeats0"]]) / n if n else 0.0,
           "self_contained_count": float(v[S["self_contained"]]), "probe_count": float(v[S["probe"]]),
           "benchmark_count": float(v[S["benchmark"]]), "temp0_count": float(v[S["temperature0"]]),
           "resent_share": resent, "prompt_space": nan, "pass_share": nan}
    out["answer_ratio"] = float(v[S["ratio_sum"]] / v[S["ratio_n"]]) if v[S["ratio_n"]] else nan
    judged = v[S["instr_judged"]]
    out["fixed_instruction_share"] = float(v[S["instr_fixed"]] / judged) if judged >= FRAME_PROMPTS else nan
    out["instruction_read_share"] = (1.0 - float(v[S["instr_unread"]] / judged)) if judged >= FRAME_PROMPTS else nan
    for feature, slot in (("cot_count", "cot"), ("grading_count", "grading"), ("identity_count", "identity"),
                          ("datagen_count", "datagen"), ("logprobs_count", "logprobs"), ("tools_count", "tools"),
                          ("open_loop_tools_count", "open_loop_tools"), ("orphan_followup_count", "orphan_followup"),
                          ("near_cap_count", "near_cap"), ("single_turn_count", "single_turn"),
                          ("templated_count", "templated"), ("impersonal_count", "impersonal")):
        out[feature] = float(v[S[slot]])
    windows = v[S["windows"]]
    out["topic_entropy"] = float(v[S["window_entropy_sum"]] / windows) if windows else nan
    areas = v[_AREAS:_AREAS + N_AREAS]
    out["areas_seen"] = float((areas > 0).sum())
    out["top_area"] = float(np.argmax(areas))
    out["novelty_rate"] = nan
    out["prada_w"] = nan
    out["gap_cv"] = out["regularity"] = out["hour_entropy"] = nan
    if n >= 10:
        gap_n, mean = v[S["gap_n"]], v[S["gap_mean"]]
        if mean > 0 and gap_n > 0:
            cv = math.sqrt(max(v[S["gap_m2"]] / gap_n, 0.0)) / mean
            out["gap_cv"] = cv
            out["regularity"] = -math.log10(max(cv, 1e-3))
        out["hour_entropy"] = _entropy_bits(v[_HOURS:_HOURS + 24].copy())
    return out


def merged_features(states: list[AccountState]) -> dict[str, float]:
    """Features of several accounts taken as one actor (hydra clusters).

    Counters add; topic breadth is the windows' mean over members; cadence is not mergeable from
    per-account moments, so the cluster is judged without it (a conservative choice).
    """
    v = np.sum([np.frombuffer(s.v, dtype=np.float64) for s in states], axis=0)
    v[S["first_t"]] = min(s.v[S["first_t"]] for s in states)
    v[S["last_t"]] = max(s.v[S["last_t"]] for s in states)
    v[S["gap_n"]] = 0
    union = 0
    for s in states:
        union |= int.from_bytes(s.bloom, "little")
    set_bits = union.bit_count()
    fraction = min(set_bits / BLOOM_BITS, 1.0 - 1e-9)
    distinct = max(min(float(v[S["distinct_seen"]]), -BLOOM_BITS / BLOOM_HASHES * math.log(1.0 - fraction)),
                   max(s.distinct_estimate() for s in states))
    out = features_of(v, distinct)
    out["gap_cv"] = out["regularity"] = float("nan")
    return out
