"""distillguard: detect and deter adversarial distillation of language models served through an API."""

__version__ = "0.1.0"
