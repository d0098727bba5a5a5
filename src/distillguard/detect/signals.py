"""The named signals: which feature each reads, how it is judged, and how it explains itself.

Each signal is fitted on organic traffic by :mod:`distillguard.detect.baseline`:

* ``rate`` signals count prompts with some property; an account is judged by a beta-binomial
  test against the spread of organic accounts' rates (so a rate organic users also reach, at
  small volume, does not count; the same rate sustained over thousands of queries does).
* ``value`` signals are per-account numbers judged by their empirical upper tail in organic
  traffic, with an exponential tail beyond the 95th percentile.

Signals are grouped in families; the scorer needs evidence from several families (see scoring).
"""

from __future__ import annotations

from dataclasses import dataclass

# ELICITATION is prompt content organic users rarely produce: demands for reasoning traces,
# grades, identity, training data, one-shot agent runs, and follow-ups lifted out of context.
# VALUE is what the answers are worth as training data: self-contained generative requests (an
# instruction, no material of the caller's own) and answers long relative to their prompts.
HARVEST, COVERAGE, ELICITATION, AUTOMATION, INFO = "harvest", "coverage", "elicitation", "automation", "info"
VALUE = "value"
FAMILIES = (HARVEST, VALUE, COVERAGE, ELICITATION, AUTOMATION)


@dataclass(frozen=True)
class Signal:
    name: str
    family: str
    kind: str          # "rate" | "value"
    feature: str       # the count (rate) or value feature it reads
    what: str          # rate: "<phrase>" completing "N% of M prompts ..."; value: the unit
    min_queries: int = 1  # below this many queries the signal gives no evidence


SIGNALS: tuple[Signal, ...] = (
    Signal("new_prompts_per_day", HARVEST, "value", "distinct_per_day", "distinct new prompts per day"),
    Signal("output_tokens_per_day", HARVEST, "value", "output_tokens_per_day",
           "output tokens per day on distinct prompts"),
    # Lifetime harvest: 15 new prompts a day for two weeks is never significant per day, but is
    # over the account's life (judged against organic accounts over the baseline's window).
    Signal("lifetime_new_prompts", HARVEST, "value", "distinct_prompts", "distinct new prompts in all"),
    Signal("lifetime_output_tokens", HARVEST, "value", "output_tokens_distinct",
           "output tokens in all on distinct prompts"),
    Signal("lifetime_elicited_tokens", HARVEST, "value", "elicited_tokens",
           "output tokens in all on distinct prompts asking for privileged content (reasoning, grades, data)"),
    Signal("self_contained_requests", VALUE, "rate", "self_contained_count",
           "are self-contained generative requests (an instruction, no material of the caller's own)"),
    Signal("answer_length_ratio", VALUE, "value", "answer_ratio",
           "(log2 of answer tokens per prompt token, geometric mean over distinct prompts)", 10),
    Signal("topic_breadth", COVERAGE, "value", "topic_entropy",
           "bits of capability-area entropy per window of 40 consecutive distinct prompts"),
    Signal("cot_elicitation", ELICITATION, "rate", "cot_count", "ask for step-by-step reasoning traces"),
    Signal("grading_prompts", ELICITATION, "rate", "grading_count", "ask the model to grade or compare answers"),
    Signal("identity_probing", ELICITATION, "rate", "identity_count",
           "probe the model's identity, cut-off or system prompt"),
    Signal("training_data_requests", ELICITATION, "rate", "datagen_count", "request training-style data"),
    Signal("open_loop_tool_use", ELICITATION, "rate", "open_loop_tools_count",
           "define tools but never return a tool result (one-shot agent trajectories)"),
    Signal("orphan_followups", ELICITATION, "rate", "orphan_followup_count",
           "are follow-ups sent without the conversation they follow (lifted from elsewhere)"),
    Signal("single_turn", AUTOMATION, "rate", "single_turn_count", "are single-turn (no conversation)"),
    Signal("templated_prompts", AUTOMATION, "rate", "templated_count", "share a near-duplicate template"),
    Signal("impersonal_prompts", AUTOMATION, "rate", "impersonal_count",
           "carry no mark of a person typing (no first person, greeting or thanks)"),
    Signal("max_tokens_near_cap", AUTOMATION, "rate", "near_cap_count", "ask for max_tokens near the cap"),
    Signal("logprobs_requests", AUTOMATION, "rate", "logprobs_count", "ask for logprobs"),
    Signal("regular_cadence", AUTOMATION, "value", "regularity", "(-log10 of the inter-arrival CV)", 10),
    Signal("round_the_clock", AUTOMATION, "value", "hour_entropy", "bits of hour-of-day entropy", 10),
    Signal("security_probes", INFO, "rate", "probe_count",
           "are security probes (jailbreak, prompt injection, system-prompt leakage, refusal tests)"),
    Signal("benchmark_format", INFO, "rate", "benchmark_count",
           "are formatted as benchmark items (options, an answer slot, answer-format demands)"),
    Signal("prada_normality", INFO, "value", "prada_w", "Shapiro-Wilk W of nearest-earlier-query distances", 50),
)
SIGNAL_BY_NAME = {s.name: s for s in SIGNALS}
