"""The gateway as a fleet: many replicas (processes, machines) sharing one view of every account.

* :mod:`.observation`: one request's compact, serialisable contribution to the live state.
* :mod:`.state`: the shared state on Redis: atomic token buckets (Lua, one round trip together
  with the observation's ``XADD``), the observation stream every replica folds into its own
  scorer, operator state (manual actions, allowlist) as a Redis hash replicated through the same
  stream, and the local fallback when Redis is unreachable.
* :mod:`.buckets`: the policy's token buckets answered by Redis instead of process memory.
* :mod:`.loader`: one loader at a time (a Redis lease) moves every replica's log into the store.
"""
