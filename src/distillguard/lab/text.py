"""Text helpers for the lab: token estimates and length-matched responses from real text."""

from __future__ import annotations

import numpy as np

from distillguard.lab.corpus import Conversation


def approx_tokens(text: str) -> int:
    """A BPE-like token estimate (about four characters a token for English)."""
    return max(1, (len(text) + 3) // 4)


class ResponsePool:
    """Real assistant replies grouped by capability area, to fill responses of synthetic prompts."""

    def __init__(self, conversations: list[Conversation]) -> None:
        by_area: dict[str, list[str]] = {}
        for conv in conversations:
            for _, reply in conv.turns:
                if len(reply) > 200:
                    by_area.setdefault(conv.area, []).append(reply)
        self.by_area = by_area
        self.all = [r for replies in by_area.values() for r in replies]

    def reply(self, rng: np.random.Generator, area: str | None, target_tokens: int) -> str:
        """Real text from ``area`` cut (or joined) to about ``target_tokens`` tokens."""
        pool = self.by_area.get(area or "", self.all) or self.all
        target_chars = max(40, target_tokens * 4)
        parts: list[str] = []
        size = 0
        while size < target_chars and len(parts) < 8:
            text = pool[int(rng.integers(len(pool)))]
            parts.append(text)
            size += len(text) + 2
        text = "\n\n".join(parts)
        if len(text) > target_chars:
            cut = text.rfind(" ", 0, target_chars)
            text = text[: cut if cut > target_chars // 2 else target_chars]
        return text
