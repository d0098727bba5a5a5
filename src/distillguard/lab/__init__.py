"""The traffic lab: simulated organic and extraction traffic built on real conversations."""
