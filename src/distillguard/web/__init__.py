"""`distillguard web`: the analyst dashboard (Starlette, server-rendered HTML, no JavaScript)."""
