"""Tamper-evident evidence: an RFC 6962 Merkle log over exchanges, signed and witnessed
checkpoints (C2SP formats), and offline-verifiable evidence packages. See docs/evidence.md."""
