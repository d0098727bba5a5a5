"""Capability areas: a coarse map of what people ask a general assistant.

Used by the traffic lab (organic interests, sweep campaigns) and by reports ("capability areas
targeted"). Assignment is by keyword evidence, so it is fast, deterministic and explainable.
"""

from __future__ import annotations

import re
from functools import lru_cache

AREAS: dict[str, tuple[str, ...]] = {
    "coding": ("python", "javascript", "java", "code", "function", "typescript", "react", "sql", "api",
               "bug", "error", "compile", "class", "c\\+\\+", "golang", "rust", "html", "css", "script",
               "docker", "git", "node", "django", "flutter", "kotlin", "regex", "algorithm"),
    "data_science": ("dataset", "pandas", "machine learning", "neural", "model training", "regression",
                     "statistics", "dataframe", "numpy", "classification", "deep learning", "tensorflow",
                     "pytorch", "data analysis", "visualization"),
    "math": ("equation", "integral", "derivative", "probability", "theorem", "proof", "matrix",
             "calculate", "algebra", "geometry", "prime", "solve for"),
    "science": ("physics", "chemistry", "biology", "quantum", "molecule", "energy", "climate",
                "evolution", "planet", "cell", "experiment", "atom"),
    "health": ("health", "medical", "disease", "symptom", "diet", "nutrition", "exercise",
               "doctor", "patient", "mental health", "therapy", "sleep", "workout"),
    "law": ("legal", "law", "contract", "court", "lawyer", "regulation", "compliance", "gdpr",
            "copyright", "lawsuit", "clause", "tenant"),
    "business": ("business", "startup", "revenue", "customer", "sales", "strategy", "company",
                 "investor", "pricing", "market", "product", "management", "finance", "budget",
                 "stock", "investment", "accounting"),
    "marketing": ("marketing", "seo", "brand", "social media", "instagram", "ad copy", "campaign",
                  "newsletter", "landing page", "email marketing", "tiktok", "content strategy"),
    "creative_writing": ("story", "poem", "novel", "character", "screenplay", "lyrics", "fiction",
                         "rap", "song", "plot", "dialogue", "fantasy"),
    "professional_writing": ("essay", "email", "letter", "resume", "cover letter", "rewrite",
                             "proofread", "paraphrase", "summarize", "summary", "article", "blog",
                             "report", "outline"),
    "education": ("student", "teacher", "lesson", "course", "curriculum", "exam", "quiz",
                  "school", "university", "learning objectives", "homework"),
    "history_culture": ("history", "war", "empire", "ancient", "century", "culture", "king",
                        "revolution", "civilization", "religion", "bible", "philosophy"),
    "technology": ("software", "cloud", "aws", "server", "network", "linux", "database",
                   "kubernetes", "security", "blockchain", "crypto", "app", "website", "iot"),
    "language": ("translate", "translation", "grammar", "spanish", "french", "german", "chinese",
                 "japanese", "korean", "english", "vocabulary", "pronunciation"),
    "lifestyle": ("travel", "recipe", "cook", "trip", "hotel", "restaurant", "gift", "wedding",
                  "fashion", "relationship", "dating", "hobby", "garden", "pet"),
    "games_entertainment": ("game", "movie", "film", "music", "anime", "dungeons", "d&d", "chess",
                            "minecraft", "episode", "tv show", "netflix", "roleplay"),
}
GENERAL = "general"
AREA_NAMES: tuple[str, ...] = tuple(AREAS) + (GENERAL,)


@lru_cache(maxsize=1)
def _lookup() -> tuple[dict[str, int], dict[str, int]]:
    """Single-word and two-word keywords -> area index."""
    single: dict[str, int] = {}
    double: dict[str, int] = {}
    for index, keywords in enumerate(AREAS.values()):
        for word in keywords:
            word = word.replace("\\", "")
            (double if " " in word else single).setdefault(word, index)
    return single, double


_WORD = re.compile(r"[a-z+#&]+")


def area_index(text: str, limit: int = 600) -> int:
    """Index into ``AREA_NAMES`` of the area with the most keyword hits in the first ``limit`` chars.

    Ties go to the area listed first; no hit means ``general``. Word and two-word lookups, a
    few microseconds a prompt (the detectors call it on every prompt they sample).
    """
    single, double = _lookup()
    words = _WORD.findall(text[:limit].lower())
    counts: dict[int, int] = {}
    for j, word in enumerate(words):
        area = single.get(word)
        if area is None and j + 1 < len(words):
            area = double.get(word + " " + words[j + 1])
        if area is not None:
            counts[area] = counts.get(area, 0) + 1
    if not counts:
        return len(AREAS)
    return max(sorted(counts), key=lambda a: counts[a])


def classify_area(text: str) -> str:
    """The capability area of ``text`` (``general`` when no keyword hits)."""
    return AREA_NAMES[area_index(text, limit=3000)]
