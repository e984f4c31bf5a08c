"""Reference names: what is accepted, what is refused with a message, and that no name reaches outside the store.
Includes property-based tests (hypothesis) of the name check and of the manifest check."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib_refdrop.errors import RefDropError
from lib_refdrop.reference.manifest import check_manifest, seal_manifest
from lib_refdrop.reference.names import MAX_NAME_BYTES, MAX_NAME_LENGTH, automatic_name, validate_name
from lib_refdrop.reference.store import MANIFEST, ReferenceStore
from tests.support import faultkit


@pytest.mark.parametrize("raw, canonical", [
    ("cat", "cat"),
    ("  my cat (v2)+ ", "my cat (v2)+"),
    ("ref-1234-20261125-203300", "ref-1234-20261125-203300"),
    ("Katze_über", "Katze_über"),
    ("cafe\u0301", "caf\u00e9"),          # NFD input, NFC folder name
    ("猫の参照", "猫の参照"),
    ("हिन्दी", "हिन्दी"),                   # combining vowel signs and virama
    ("a.b", "a.b"),
    ("x" * MAX_NAME_LENGTH, "x" * MAX_NAME_LENGTH),
])
def test_accepted_names(raw, canonical):
    assert validate_name(raw) == canonical


@pytest.mark.parametrize("raw, why", [
    ("", "empty"), ("   ", "empty"), (None, "must be text"), (5, "must be text"), (b"cat", "must be text"),
    ("x" * (MAX_NAME_LENGTH + 1), "longer than"),
    ("\U00020000" * 60, "too long for the file system"),   # 60 characters, 240 bytes
    ("..", "may not contain"), ("a..b", "may not contain"), ("../etc", "may not contain"),
    ("a/b", "may not contain"), ("/abs", "may not contain"), ("a\\b", "may not contain"),
    ("C:\\x", "may not contain"), ("a\x00b", "may not contain"),
    (".hidden", "must start with"), (".incoming", "must start with"), ("-x", "must start with"),
    ("a\nb", "may only use"), ("a\tb", "may only use"), ("a:b", "may only use"), ("a*b", "may only use"),
    ("a?b", "may only use"), ('a"b', "may only use"), ("a<b>", "may only use"), ("a|b", "may only use"),
    ("a\u200bb", "may only use"), ("a\u202eb", "may only use"), ("😀", "may only use"), ("\ud800", "may only use"),
    ("name.", "may not end"),
    ("CON", "reserved"), ("nul.txt", "reserved"), ("com1", "reserved"), ("LPT9.x", "reserved"), ("com¹", "reserved"),
])
def test_refused_names(raw, why):
    with pytest.raises(RefDropError, match=why):
        validate_name(raw)


def test_automatic_name_is_valid():
    for seed in (0, -1, 2**32, None, "abc"):
        name = automatic_name(seed)
        assert validate_name(name) == name


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.one_of(
    st.text(max_size=120),
    st.lists(st.sampled_from(list("ab./\\ \x00:-_()+.") + ["..", "\u0301", "é", "\U00020000"]), max_size=90)
    .map("".join),
))
def test_property_any_valid_name_is_one_folder_inside_the_store(tmp_path, raw):
    try:
        name = validate_name(raw)
    except RefDropError as exc:
        assert str(exc).startswith("RefDrop: ")
        return
    assert validate_name(name) == name  # canonical form is stable
    assert 0 < len(name) <= MAX_NAME_LENGTH and len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert name not in (".", "..") and not name.startswith(".")
    assert not any(c in name for c in "/\\\x00:*?\"<>|\n\r\t")
    folder = tmp_path / name
    assert folder.parent == tmp_path
    folder.mkdir(exist_ok=True)  # the file system takes it
    assert folder.resolve().parent == tmp_path.resolve()
    folder.rmdir()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def real_manifest(tmp_path_factory):
    store = ReferenceStore(tmp_path_factory.mktemp("m"))
    return faultkit.make_reference(store, "m")


def _mutations():
    """A path into the manifest and a value to put there (or to delete it with ``...``)."""
    paths = st.sampled_from([
        (), ("format_version",), ("name",), ("family",), ("layers",), ("layers", "input1.0"),
        ("layers", "input1.0", "n_heads"), ("chunks",), ("chunks", 0), ("slots",), ("slots", 0),
        ("slots", 0, "index"), ("slots", 0, "sigma"), ("slots", 0, "occurrence"), ("slots", 0, "files"),
        ("slots", 0, "files", 0), ("slots", 0, "files", 0, "file"), ("slots", 0, "files", 0, "bytes"),
        ("slots", 0, "files", 0, "sha256"), ("profile",), ("dtype",), ("bytes",), ("created",),
    ])
    return st.tuples(paths, st.one_of(st.just(...), _JSON, st.sampled_from(
        ["../../etc/passwd", "x.pt", "evil.pkl", "slot.safetensors", "/abs.safetensors", -1, 0, 2, True,
         float("inf"), "input9.9", "uncond0", "bogus9.0", {"n_heads": 0, "dim_head": 1, "tokens": 1}])))


def _apply(manifest, path, value):
    if not path:
        return value
    target = manifest
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        if isinstance(target, dict):
            target.pop(path[-1], None)
        else:
            del target[path[-1]]
    else:
        target[path[-1]] = value
    return manifest


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(_mutations(), min_size=1, max_size=3), reseal=st.booleans())
def test_property_a_manifest_is_either_usable_or_refused_with_a_message(real_manifest, mutations, reseal):
    """Whatever a manifest holds, ``check_manifest`` either raises a RefDropError naming the reference or returns a
    manifest the reader and the engine can use without a KeyError/TypeError (resealed: past the checksum)."""
    from lib_refdrop.attn.patches import plan_use
    from lib_refdrop.params import build
    from lib_refdrop.reference.reader import slots_of
    from lib_refdrop.reference.sigmas import SigmaMap

    manifest = copy.deepcopy(real_manifest)
    try:
        for path, value in mutations:
            manifest = _apply(manifest, path, value)
    except (KeyError, IndexError, TypeError):
        return  # the path no longer exists after an earlier mutation
    if reseal and isinstance(manifest, dict):
        try:
            seal_manifest(manifest)
        except (TypeError, ValueError):
            pass
    try:
        checked = check_manifest(manifest, "fuzzed")
    except RefDropError as exc:
        assert "'fuzzed'" in str(exc)
        return
    SigmaMap(slots_of(checked))
    plan_use(build({"disabled_blocks": ("OUT00",), "skip_first_up": True}), (10.0, 0.0), list(checked["layers"]))
    hash((checked.get("created"), checked.get("bytes")))  # the reader's cache key


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300) | _JSON.map(lambda v: json.dumps(v).encode()))
def test_property_any_manifest_file_gives_a_manifest_or_a_named_error(tmp_path, data):
    store = ReferenceStore(tmp_path)
    folder = tmp_path / "fuzz"
    folder.mkdir(exist_ok=True)
    (folder / MANIFEST).write_bytes(data)
    assert "fuzz" in store.names()
    with pytest.raises(RefDropError, match="'fuzz'"):
        store.manifest("fuzz")
