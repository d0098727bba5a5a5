"""Shared intelligence between peer organisations: signed STIX 2.1 over TAXII 2.1.

* :mod:`keys` — the community key (HMAC of identifiers) and the organisation's Ed25519 key;
* :mod:`home` — the intel home directory: our organisation, our keys, our peers;
* :mod:`identifiers` — identifier normalisation, keyed hashes, keyed template signatures;
* :mod:`export` — confirmed campaigns of a scan as a STIX 2.1 bundle;
* :mod:`signing` — detached Ed25519 signatures over a bundle's objects;
* :mod:`bundle` — streaming, checked reading of bundles;
* :mod:`store` — DuckDB tables for shared objects, imported indicators and TAXII state;
* :mod:`importer` — verify and import bundles (one transaction each);
* :mod:`match` — imported indicators against local accounts: the scan's ``intel`` signal;
* :mod:`taxii` — the TAXII 2.1 server; :mod:`sync` — pulling peers' collections.
"""
