"""`distillguard demo`: the whole story end to end on embedded defaults."""

from distillguard.demo.story import run_demo

__all__ = ["run_demo"]
