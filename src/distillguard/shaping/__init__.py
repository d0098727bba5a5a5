"""Output shaping: answers that serve a reader but are worth less as training data to a copier
(antidistillation sampling, sparse anchor-step perturbation, reasoning summaries, decoupled reasoning). See docs/shaping.md."""

MODES = ("antidistillation", "anchor", "summary", "decoupled")    # what the gateway's ``shape`` action may ask for
