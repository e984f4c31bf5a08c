"""The REST API keeps the promises of its own OpenAPI document (schemathesis), and the name schema is validate_name.

schemathesis loads the document from a real FastAPI app with ``register_routes`` (in-process ASGI: no server, no
network), generates requests from it, valid and invalid, and runs its default checks on every answer: no 5xx,
only declared status codes, content types and headers, bodies that match their schema, invalid data refused,
valid data accepted, auth enforced where declared. Every case runs on a fresh copy of a small store, so a DELETE
or rename in one case cannot change what the next one sees (stateless runs, reproducible with ``derandomize``).
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import unicodedata

import jsonschema_rs
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib_refdrop.errors import RefDropError
from lib_refdrop.reference.names import MAX_NAME_BYTES, MAX_NAME_LENGTH, validate_name
from lib_refdrop.reference.store import PREVIEW, ReferenceStore
from lib_refdrop.webui.api import name_schema, register_routes
from tests.support.faultkit import make_reference

CREDENTIALS = {"alice": "s3cret"}
ALICE = {"Authorization": "Basic " + base64.b64encode(b"alice:s3cret").decode()}
# Bounded for CI (two cores): a few seconds per operation, the same cases on every run.
SCHEMATHESIS_SETTINGS = settings(
    max_examples=25, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# One name per kind of answer: 200, no preview (404 from .../preview), unreadable manifest (400), planted preview
# (details with preview_error, 400 from .../preview).
EXAMPLE_NAMES = ["cat", "dog", "broken", "linked", "Tabby cat (v2)"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A store with a reference for each of EXAMPLE_NAMES."""
    folder = tmp_path_factory.mktemp("template")
    root = folder / "refs"
    store = ReferenceStore(root)
    for seed, name in enumerate(("cat", "dog", "linked", "Tabby cat (v2)")):
        make_reference(store, name, seed=seed)
    (root / "dog" / PREVIEW).unlink()
    (folder / "secret.txt").write_text("SECRET")
    (root / "linked" / PREVIEW).unlink()
    (root / "linked" / PREVIEW).symlink_to(folder / "secret.txt")
    (root / "broken").mkdir()
    (root / "broken" / "manifest.json").write_text("{not json")
    return root


class FreshStores:
    """``get_store`` for the app; ``renew()`` puts a new copy of the template in place before each case."""

    def __init__(self, template, folder):
        self.template, self.folder, self.store = template, folder, None
        self._counter = itertools.count()

    def renew(self) -> None:
        if self.store is not None:
            shutil.rmtree(self.store.root, ignore_errors=True)
        root = self.folder / f"case{next(self._counter)}"
        shutil.copytree(self.template, root, symlinks=True)
        self.store = ReferenceStore(root)

    def __call__(self) -> ReferenceStore:
        return self.store


@pytest.fixture
def stores(template, tmp_path):
    return FreshStores(template, tmp_path)


def _schema(stores, credentials=None):
    """The app's own OpenAPI document as schemathesis loads it, with the test store's names as examples (examples
    only steer generation toward existing references; every constraint is the served one)."""
    app = FastAPI()
    register_routes(app, stores, credentials)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    document = schema.raw_schema
    for operation in document["paths"].values():
        for call in operation.values():
            for parameter in call.get("parameters", []):
                if parameter["name"] == "name":
                    parameter["schema"]["examples"] = EXAMPLE_NAMES
    loaded = schemathesis.openapi.from_dict(document)
    loaded.app = app  # requests go to the app in-process (ASGI), as from_asgi sets it up
    return loaded


@pytest.fixture
def open_api(stores):
    return _schema(stores)


@pytest.fixture
def api_under_auth(stores):
    return _schema(stores, CREDENTIALS)


@schemathesis.pytest.from_fixture("open_api").parametrize()
@SCHEMATHESIS_SETTINGS
def test_the_api_answers_as_its_openapi_document_says(case, stores):
    """All default checks, none excluded. schemathesis draws text for a pattern from ASCII (it reads patterns with
    re.ASCII), where the name's pattern is exact. Should a later version draw other characters, its
    positive_data_acceptance check would report a symbol such as '€' refused with 400: by design the pattern lets
    every non-ASCII character through (lib_refdrop/webui/api.py, and the name's description)."""
    stores.renew()
    case.call_and_validate()


@schemathesis.pytest.from_fixture("api_under_auth").parametrize()
@SCHEMATHESIS_SETTINGS
def test_the_api_under_auth_answers_as_its_openapi_document_says(case, stores):
    stores.renew()
    case.call_and_validate(headers=ALICE)


# -- what the document declares -------------------------------------------------------------------------------


def served_document(credentials=None) -> dict:
    app = FastAPI()
    register_routes(app, lambda: None, credentials)
    return TestClient(app).get("/openapi.json").json()


def operations(document: dict) -> dict[str, dict]:
    return {f"{method.upper()} {path}": call for path, calls in document["paths"].items()
            for method, call in calls.items()}


ERROR_BODY = {"$ref": "#/components/schemas/ApiError"}


def test_every_answer_is_declared_with_its_body():
    document = served_document()
    calls = operations(document)
    assert set(calls) == {f"{method} /refdrop/v1/references{path}" for method, path in [
        ("GET", ""), ("POST", ""), ("GET", "/{name}"), ("DELETE", "/{name}"), ("GET", "/{name}/preview"),
        ("GET", "/{name}/export"), ("POST", "/{name}/rename")]}
    for label, call in calls.items():
        answers = call["responses"]
        expected = {"200", "400", "404", "409", "500"}
        if label.endswith("references"):  # the list; an import (its name in the query, no 404)
            expected = {"200", "400", "409", "500"} if label.startswith("POST") else {"200", "500"}
        assert set(answers) == expected, label  # no 422: the routes never send FastAPI's validation answer
        for status in expected - {"200"}:
            assert answers[status]["content"]["application/json"]["schema"] == ERROR_BODY, (label, status)
        assert "security" not in call
    error = document["components"]["schemas"]["ApiError"]
    assert error["required"] == ["error", "detail"]
    ok = {label: call["responses"]["200"]["content"] for label, call in calls.items()}
    assert ok["GET /refdrop/v1/references/{name}/preview"] == {
        "image/png": {"schema": {"type": "string", "format": "binary"}}}
    assert ok["GET /refdrop/v1/references/{name}"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ReferenceDetails"}
    assert ok["GET /refdrop/v1/references"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ReferenceList"}
    assert ok["GET /refdrop/v1/references/{name}/export"] == {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    assert ok["POST /refdrop/v1/references"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Imported"}
    assert set(calls["POST /refdrop/v1/references"]["requestBody"]["content"]) == {"application/octet-stream"}


def test_under_auth_every_call_declares_basic_auth_and_401():
    document = served_document(CREDENTIALS)
    assert document["components"]["securitySchemes"] == {"HTTPBasic": {"type": "http", "scheme": "basic"}}
    for label, call in operations(document).items():
        assert call["security"] == [{"HTTPBasic": []}], label
        assert call["responses"]["401"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/AuthError"}, label


def test_the_name_is_declared_with_its_constraints():
    calls = operations(served_document())
    rename = calls["POST /refdrop/v1/references/{name}/rename"]
    body = rename["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["new_name"] and body["additionalProperties"] is False
    for label, call in calls.items():
        if "{name}" not in label:
            continue
        (parameter,) = call["parameters"]
        assert parameter["in"] == "path" and parameter["required"]
        for schema in (parameter["schema"], body["properties"]["new_name"]):
            assert schema["type"] == "string" and schema["maxLength"] == MAX_NAME_LENGTH
            assert schema["pattern"] == name_schema()["pattern"]
        assert f"{MAX_NAME_BYTES} bytes" in parameter["description"] and "NFC" in parameter["description"]


# -- the name's JSON Schema against validate_name ------------------------------------------------------------

NAME_SCHEMA = {"type": "string", **name_schema()}
NAME_VALIDATOR = jsonschema_rs.validator_for(NAME_SCHEMA)
# Characters Python's unicodedata knows, and some that matter: separators, dots, NUL, NFD marks, other scripts.
KNOWN_CHARACTERS = st.characters(exclude_categories=["Cn", "Cs"])
SPECIAL = st.sampled_from("aZ09_ .()+-/\\\x00\n\u00e9\u0301\u0661\u732b\u01c5\u00b2\u20ac\u200b")


def canonical_names(alphabet) -> st.SearchStrategy[str]:
    """Names as validate_name returns them (NFC, trimmed), short enough in bytes for the length checks to matter."""
    return st.text(alphabet, max_size=90).map(lambda t: unicodedata.normalize("NFC", t.strip())).filter(
        lambda n: len(n.encode("utf-8")) <= MAX_NAME_BYTES)


def accepted_by_validate_name(name: str) -> bool:
    try:
        return validate_name(name) == name
    except RefDropError:
        return False


@settings(max_examples=1500, deadline=None, derandomize=True, database=None)
@given(canonical_names(SPECIAL | KNOWN_CHARACTERS))
def test_the_name_schema_never_refuses_a_name_validate_name_accepts(name):
    if accepted_by_validate_name(name):
        assert NAME_VALIDATOR.is_valid(name), repr(name)


@settings(max_examples=1500, deadline=None, derandomize=True, database=None)
@given(canonical_names(SPECIAL.filter(str.isascii) | st.characters(max_codepoint=127)))
def test_for_ascii_names_the_name_schema_is_validate_name(name):
    assert NAME_VALIDATOR.is_valid(name) == accepted_by_validate_name(name), repr(name)


VALID_NAMES = ["cat", "Tabby cat (v2)", "猫", "١٢", "_x", "a.b", "ref-1-20260101-120000", "x" * 80, "é" * 80,
               "क्षि", "conduct", "con (1)", "com10", "lpt", "a+b", "ǅemal", "𝒜lpha", "a b"]
INVALID_ASCII_NAMES = ["", " cat", "cat ", "cat.", "a..b", "..", "a/b", "a\\b", "x\x00y", "-x", ".hidden", "x" * 81,
                       "con", "CON", "Con.txt", "nul .x", "com1", "a:b", "a*b", "a\nb", "a\tb"]
# Refused by validate_name, let through by the pattern (the name's description says so): not ASCII, not a letter.
INVALID_NAMES_THE_PATTERN_LETS_THROUGH = ["€", "a\u200bb", "a\u00a0b", "😀", "lpt\u00a0", "\u0301a", "a\u0085"]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names_match_the_schema(name):
    assert accepted_by_validate_name(name)
    assert NAME_VALIDATOR.is_valid(name)


@pytest.mark.parametrize("name", INVALID_ASCII_NAMES + ["LPT²", "a..é", "猫/x", "é."])
def test_invalid_names_do_not_match_the_schema(name):
    assert not accepted_by_validate_name(name)
    assert not NAME_VALIDATOR.is_valid(name)


@pytest.mark.parametrize("name", INVALID_NAMES_THE_PATTERN_LETS_THROUGH)
def test_non_ascii_non_letters_pass_the_pattern_and_are_refused_by_the_server(name):
    assert NAME_VALIDATOR.is_valid(name) and not accepted_by_validate_name(name)


@pytest.mark.parametrize("name", VALID_NAMES + INVALID_ASCII_NAMES + INVALID_NAMES_THE_PATTERN_LETS_THROUGH)
def test_pythons_re_reads_the_pattern_as_the_schema_validator_does(name):
    if len(name) <= MAX_NAME_LENGTH:  # maxLength aside
        assert (re.search(NAME_SCHEMA["pattern"], name) is not None) == NAME_VALIDATOR.is_valid(name)


NODE_CHECK = """
const [pattern, names] = JSON.parse(require("fs").readFileSync(0, "utf8"));
const plain = new RegExp(pattern), unicode = new RegExp(pattern, "u");  // Swagger UI's reading, and ECMA's u mode
console.log(JSON.stringify(names.map((n) => [plain.test(n), unicode.test(n)])));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_javascript_reads_the_pattern_the_same_with_and_without_the_u_flag():
    """Swagger UI (the hosts' /docs) tests a pattern with a plain ``new RegExp``: the pattern must not refuse a
    valid name there, nor in ECMA-262's u mode (what JSON Schema validators such as Ajv use)."""
    names = VALID_NAMES + INVALID_ASCII_NAMES + INVALID_NAMES_THE_PATTERN_LETS_THROUGH + ["LPT²", "é."]
    data = json.dumps([NAME_SCHEMA["pattern"], names])
    verdicts = json.loads(subprocess.run(["node", "-e", NODE_CHECK], input=data, capture_output=True, text=True,
                                         check=True, timeout=60).stdout)
    for name, (plain, unicode) in zip(names, verdicts, strict=True):
        expected = NAME_VALIDATOR.is_valid(name) if len(name) <= MAX_NAME_LENGTH else True  # maxLength aside
        assert plain == unicode == expected, (name, plain, unicode)
