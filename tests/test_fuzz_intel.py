"""Generated bad input for intel: mutated bundles and signature files never import anything and
fail with one clear error; TAXII query parameters, paths and headers never make a 5xx."""

from __future__ import annotations

import copy
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from distillguard.errors import DistillguardError
from distillguard.gateway.server import ServerThread
from distillguard.intel.importer import import_bundle
from distillguard.intel.signing import sign_objects
from distillguard.intel.store import IntelStore
from distillguard.intel.taxii import API_ROOT, TaxiiServer
from hostile import ANY_JSON, HEADER_VALUE, TEXT, encode, nest
from intel_support import SECRET_T_ON_A, make_homes

INDICATOR = {"type": "indicator", "spec_version": "2.1", "id": "indicator--9a1f0f3e-1111-4222-8333-444455556666",
             "created": "2026-10-01T00:00:00.000Z", "modified": "2026-10-01T00:00:00.000Z",
             "pattern": "[email-addr:x_hmac_sha256 = '" + "ab" * 32 + "']", "pattern_type": "stix",
             "valid_from": "2026-10-01T00:00:00.000Z", "confidence": 70}
BUNDLE_ID = "bundle--0c0f3c39-4b8e-4c36-9d8b-2b7f4d6e1a55"


@pytest.fixture(scope="module")
def homes(tmp_path_factory):
    work = tmp_path_factory.mktemp("fuzz-intel")
    home_a, home_b = make_homes(work)
    objects = [INDICATOR | {"id": f"indicator--9a1f0f3e-1111-4222-8333-{i:012d}"} for i in range(3)]
    sig = sign_objects(objects, home_a.signing_key(), home_a, bundle_id=BUNDLE_ID, valid_days=30)
    return work, home_a, home_b, objects, sig


def _import(work, home_b, bundle: bytes, sig: bytes) -> int:
    (work / "b.json").write_bytes(bundle)
    (work / "b.json.sig").write_bytes(sig)
    with IntelStore(home_b.db_path) as store:
        try:
            import_bundle(work / "b.json", home_b, store)
        except DistillguardError as exc:
            assert str(exc)
        return store.count()


FIELDS = st.sampled_from(list(INDICATOR) + ["x_extra", "external_references"])


@given(st.integers(0, 2), FIELDS, ANY_JSON | TEXT, st.booleans())
@example(0, "x_extra", 2**70, False)            # parsed by json, refused by orjson: was a TypeError
@example(1, "x_extra", nest(300), False)         # deeper than orjson serialises: was a TypeError
def test_a_mutated_object_imports_nothing(homes, index, field, value, delete):
    work, _, home_b, objects, sig = homes
    mutated = copy.deepcopy(objects)
    if delete:
        if field not in mutated[index]:
            return
        del mutated[index][field]
    else:
        if mutated[index].get(field) == value:
            return
        mutated[index][field] = value
    bundle = encode({"type": "bundle", "id": BUNDLE_ID, "objects": mutated})
    assert _import(work, home_b, bundle, orjson.dumps(sig)) == 0


@given(st.sampled_from(["signature", "key_id", "object_digests", "expires", "bundle_id", "algorithm", "signer",
                        "created_by_ref", "type"]), ANY_JSON | TEXT)
@example("signer", 2**70)
@example("signer", nest(300))
def test_a_mutated_signature_imports_nothing(homes, field, value):
    work, _, home_b, objects, sig = homes
    if sig.get(field) == value:
        return
    bundle = orjson.dumps({"type": "bundle", "id": BUNDLE_ID, "objects": objects})
    assert _import(work, home_b, bundle, encode(sig | {field: value})) == 0


@given(st.binary(max_size=400) | ANY_JSON.map(encode), st.binary(max_size=200) | ANY_JSON.map(encode))
def test_garbage_bundles_and_signatures_import_nothing(homes, bundle, sig):
    work, _, home_b, _, _ = homes
    assert _import(work, home_b, bundle, sig) == 0


@pytest.fixture(scope="module")
def taxii(homes):
    _, home_a, _, _, _ = homes
    with ServerThread(TaxiiServer(home_a, max_page=25).app()) as server, \
            httpx.Client(base_url=server.url, timeout=30, auth=("taxii-client", SECRET_T_ON_A)) as client:
        yield home_a, client


PARAM_NAMES = st.sampled_from(["added_after", "limit", "next", "match[id]", "match[type]", "match[version]",
                               "match[spec_version]", "other"])
PARAM_VALUES = TEXT | st.sampled_from(["0", "-1", "99999999999999999999", "2026-10-05T12:00:00.000Z",
                                        "2026-13-45T99:99:99Z", "last,first,all", "2.1", "1e9", ",,,"])


@given(st.sampled_from(["objects/", "manifest/", "objects/{oid}/", "objects/{oid}/versions/", ""]),
       st.sampled_from(["shared", "inbox", "nope", "{cid}"]), TEXT,
       st.dictionaries(PARAM_NAMES, PARAM_VALUES, max_size=4))
def test_taxii_query_parameters(taxii, tail, collection, oid, params):
    home_a, client = taxii
    segment = quote(oid or "x", safe="")
    cid = home_a.collections[collection]["id"] if collection in home_a.collections else segment
    path = f"/{API_ROOT}/collections/{cid}/" + tail.replace("{oid}", segment)
    r = client.get(path, params=params, headers={"accept": "application/taxii+json;version=2.1"})
    assert r.status_code < 500, (r.status_code, r.text[:300])
    r.json()


@given(st.dictionaries(st.sampled_from(["accept", "authorization", "content-type"]), HEADER_VALUE, max_size=3),
       st.sampled_from(["GET", "POST"]), ANY_JSON)
def test_taxii_headers_and_bodies(taxii, headers, method, body):
    home_a, client = taxii
    cid = home_a.collections["inbox"]["id"]
    r = client.request(method, f"/{API_ROOT}/collections/{cid}/objects/", headers=headers, content=encode(body))
    assert r.status_code < 500, (r.status_code, r.text[:300])
