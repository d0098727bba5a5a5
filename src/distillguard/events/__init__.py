"""The event record and its readers and writers (JSON Lines, Parquet)."""

from distillguard.events.schema import Event, PromptView, event_from_obj, prompt_view, response_text

__all__ = ["Event", "PromptView", "event_from_obj", "prompt_view", "response_text"]
