"""A reference shared as one file (lib_refdrop/reference/bundle.py): export -> import -> Use gives the original's Use
bit for bit; a received file is checked like a store folder, and every field of it that is tampered with is refused
by name, leaving the store as it was; a file dropped into the store is imported when the store is listed."""

from __future__ import annotations

import json
import os
import struct

import pytest
import safetensors.torch
import torch

from lib_refdrop import library, standalone
from lib_refdrop.errors import RefDropError, ReferenceExists
from lib_refdrop.reference import bundle
from lib_refdrop.reference.manifest import SEAL, seal_manifest, sha256_bytes
from lib_refdrop.reference.store import PREVIEW, ReferenceStore
from lib_refdrop.reference.writer import ReferenceWriter
from tests.support.faultkit import (
    GENERATION,
    PNG,
    leftovers,
    make_reference,
    recording,
    save_generation,
    slot_tensors,
    snapshot,
    trace_calls,
    use_generation,
)
from tests.support.hostsim import AttnHost, make_unet
from tests.support.refdrop_harness import save, use

TINY = {"steps": 3, "sampler": "euler", "seed": 1, "cfg": 7.0, "height": 8, "width": 8}


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture
def stores(tmp_path):
    return ReferenceStore(tmp_path / "sender"), ReferenceStore(tmp_path / "receiver")


@pytest.fixture(scope="module")
def unet_host():
    return AttnHost(make_unet("sd15", "tiny", seed=0))


# -- round trips ---------------------------------------------------------------------------------------------------


def test_an_exact_reference_round_trips_bit_for_bit(stores, tmp_path):
    sender, receiver = stores
    calls = list(trace_calls())
    saved = save_generation(sender, "cat", calls)
    file = bundle.export_reference(sender, "cat", tmp_path)
    assert file.name == "cat.refdrop.safetensors"
    assert bundle.import_reference(receiver, file) == "cat"
    assert receiver.manifest("cat") == sender.manifest("cat")  # the same seal: the same reference
    assert same(use_generation(receiver, "cat", 1.0, calls), saved)  # the Save's settings: the Save, bit for bit
    other = list(trace_calls(seed=5))
    assert same(use_generation(receiver, "cat", 0.4, other), use_generation(sender, "cat", 0.4, other))
    again = bundle.export_reference(receiver, "cat", tmp_path / "receiver")
    assert again.read_bytes() == file.read_bytes()  # export -> import -> export: the same file


@pytest.mark.parametrize("profile", ["trajectory", "lean"])
def test_a_reference_of_another_profile_round_trips_bit_for_bit(stores, tmp_path, unet_host, profile):
    sender, receiver = stores
    save(unet_host, sender, "fox", profile=profile, **TINY)
    file = bundle.export_reference(sender, "fox", tmp_path)
    assert bundle.import_reference(receiver, file, "vixen") == "vixen"
    manifest = receiver.manifest("vixen")
    assert manifest["name"] == "vixen" and manifest["profile"] == profile
    assert manifest[SEAL] != sender.manifest("fox")[SEAL]  # sealed again under its new name
    other = {**TINY, "seed": 4}
    assert torch.equal(use(unet_host, receiver, "vixen", 0.5, **other), use(unet_host, sender, "fox", 0.5, **other))


def test_the_file_is_a_safetensors_file_of_the_folders_files_and_the_manifest(stores, tmp_path):
    sender, _ = stores
    make_reference(sender, "cat")
    sender.set_mask("cat", PNG)
    file = bundle.export_reference(sender, "cat", tmp_path)
    with safetensors.safe_open(str(file), "pt") as opened:
        metadata, names = opened.metadata(), set(opened.keys())
        first = opened.get_tensor("slot_0000_0.safetensors")
    folder = sender.path("cat")
    assert names == {p.name for p in folder.iterdir()} - {"manifest.json"} == {
        *(e["file"] for s in sender.manifest("cat")["slots"] for e in s["files"]), "preview.png", "mask.png"}
    assert first.dtype == torch.uint8 and first.numpy().tobytes() == (folder / "slot_0000_0.safetensors").read_bytes()
    assert json.loads(metadata[bundle.KEYS["manifest"]]) == sender.manifest("cat")
    assert metadata[bundle.KEYS["format"]] == bundle.FORMAT and metadata[bundle.KEYS["version"]] == "1"


def test_a_taken_name_is_refused_unless_overwriting_and_nothing_stored_is_lost(stores, tmp_path):
    sender, receiver = stores
    make_reference(sender, "cat", seed=1)
    make_reference(receiver, "cat", seed=2)
    before = snapshot(receiver.path("cat"), with_manifest=True)
    file = bundle.export_reference(sender, "cat", tmp_path)
    with pytest.raises(ReferenceExists, match="cat.refdrop.safetensors was not imported: a reference named 'cat' "
                                              "already exists"):
        bundle.import_reference(receiver, file)
    assert snapshot(receiver.path("cat"), with_manifest=True) == before and leftovers(receiver.root) == []
    assert bundle.import_reference(receiver, file, "cat (2)") == "cat (2)"
    bundle.import_reference(receiver, file, overwrite=True)
    assert receiver.manifest("cat") == sender.manifest("cat") and leftovers(receiver.root) == []


# -- a tampered file -------------------------------------------------------------------------------------------------


def split(data: bytes) -> tuple[dict, dict[str, bytes]]:
    """(metadata, tensor name -> bytes) of a reference file."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    body = data[8 + length:]
    metadata = header.pop("__metadata__")
    return metadata, {k: body[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items()}


def join(metadata: dict, tensors: dict[str, bytes], edit_header=None, raw_header: bytes | None = None) -> bytes:
    header, offset = {}, 0
    for name, data in tensors.items():
        header[name] = {"dtype": "U8", "shape": [len(data)], "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    header["__metadata__"] = metadata
    if edit_header is not None:
        edit_header(header)
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(tensors.values())


def manifest_of(metadata: dict) -> dict:
    return json.loads(metadata[bundle.KEYS["manifest"]])


def resealed(metadata: dict, edit) -> dict:
    """The metadata with its manifest edited and sealed again, as a forger would."""
    manifest = manifest_of(metadata)
    edit(manifest)
    return {**metadata, bundle.KEYS["manifest"]: json.dumps(seal_manifest(manifest))}


def with_slot(metadata: dict, tensors: dict, edit) -> tuple[dict, dict]:
    """The first slot file's tensors edited, its manifest entry and the seal made to match."""
    manifest = manifest_of(metadata)
    entry = manifest["slots"][0]["files"][0]
    values = safetensors.torch.load(tensors[entry["file"]])
    edit(values)
    data = safetensors.torch.save(values)
    entry.update(bytes=len(data), sha256=sha256_bytes(data))
    return ({**metadata, bundle.KEYS["manifest"]: json.dumps(seal_manifest(manifest))},
            {**tensors, entry["file"]: data})


def _dup_key(meta, tensors):
    text = json.dumps({"preview.png": {"dtype": "U8", "shape": [0], "data_offsets": [0, 0]}})[:-1] + ", " + \
        json.dumps({**{k: {"dtype": "U8", "shape": [len(v)], "data_offsets": [0, len(v)]} for k, v in tensors.items()},
                    "__metadata__": meta})[1:]
    return join(meta, tensors, raw_header=text.encode())


def _shift(header):
    header["slot_0000_0.safetensors"]["data_offsets"][1] += 1


SLOT = "slot_0000_0.safetensors"
TAMPERED = {  # id -> (what it does to the file: (metadata, tensors) -> bytes, what the refusal says)
    "header-size": (lambda m, t: struct.pack("<Q", 10**12) + join(m, t)[8:], "its header claims 1000000000000 bytes"),
    "header-json": (lambda m, t: join(m, t, raw_header=b'{"a": '), "its header is not valid JSON"),
    "header-nan": (lambda m, t: join(m, t, raw_header=b'{"a": NaN}'), "its header is not valid JSON"),
    "header-duplicate": (_dup_key, "'preview.png' appears twice"),
    "metadata-missing": (lambda m, t: join({}, t), "its metadata lacks refdrop.format, refdrop.manifest"),
    "metadata-extra": (lambda m, t: join({**m, "refdrop.note": "hi"}, t), "has unknown keys 'refdrop.note'"),
    "format": (lambda m, t: join({**m, "refdrop.format": "lora"}, t), "refdrop.format is 'lora'"),
    "version": (lambda m, t: join({**m, "refdrop.version": "2"}, t), "refdrop.version is '2'; this sd-refdrop "
                                                                     "reads version 1"),
    "manifest-json": (lambda m, t: join({**m, "refdrop.manifest": "{"}, t), "refdrop.manifest is not valid JSON"),
    "manifest-seal": (lambda m, t: join({**m, "refdrop.manifest": json.dumps({**manifest_of(m), "bytes": 1})}, t),
                      "manifest.json does not match its checksum"),
    "manifest-field": (lambda m, t: join(resealed(m, lambda x: x.update(slots=[])), t),
                       r"broken manifest \(no saved steps\)"),
    "manifest-file-traversal": (lambda m, t: join(resealed(m, lambda x: x["slots"][0]["files"][0].update(
        file="../../x.safetensors")), t), r"broken manifest \(bad file list in slot 0\)"),
    "name-traversal": (lambda m, t: join(resealed(m, lambda x: x.update(name="../../etc")), t),
                       "its manifest's name is not a reference name"),
    "family": (lambda m, t: join(resealed(m, lambda x: x.update(family="sdxl")), t),
               "family SDXL, whose models have no layer input1.0"),
    "profile": (lambda m, t: join(resealed(m, lambda x: x.update(profile="mystery")), t),
                "unknown storage profile 'mystery'"),
    "tensor-dtype": (lambda m, t: join(m, t, lambda h: h[SLOT].update(dtype="F32")),
                     f"tensor '{SLOT}' has dtype 'F32', not U8"),
    "tensor-shape": (lambda m, t: join(m, t, lambda h: h[SLOT].update(shape=[2, h[SLOT]["shape"][0] // 2])),
                     f"tensor '{SLOT}' has shape .* not one dimension of bytes"),
    "tensor-offsets": (lambda m, t: join(m, t, _shift), f"tensor '{SLOT}' has data offsets"),
    "tensor-size": (lambda m, t: join(m, {**t, SLOT: t[SLOT][:-1]}), f"{SLOT} has \\d+ bytes; its manifest records"),
    "tensor-extra": (lambda m, t: join(m, {**t, "payload.pkl": b"cos\nsystem\n"}),
                     "it holds 'payload.pkl', which its manifest does not list"),
    "tensor-traversal": (lambda m, t: join(m, {**t, "../../x.safetensors": b"x"}),
                         "it holds '../../x.safetensors', which its manifest does not list"),
    "tensor-missing": (lambda m, t: join(m, {k: v for k, v in t.items() if k != SLOT}), f"it lacks {SLOT}"),
    "trailing-bytes": (lambda m, t: join(m, t) + b"\0" * 8, "its tensors hold \\d+ bytes; the file holds"),
    "checksum": (lambda m, t: join(m, {**t, SLOT: bytes([t[SLOT][0] ^ 1]) + t[SLOT][1:]}),
                 f"reference 'cat' is corrupt: {SLOT} does not match its checksum"),
    "values-non-finite": (lambda m, t: join(*with_slot(m, t, lambda v: v["input1.0/cond0/k"].fill_(float("nan")))),
                          "holds non-finite values .* in input1.0/cond0/k"),
    "values-huge": (lambda m, t: join(*with_slot(m, t, lambda v: v["input1.0/cond0/k"].fill_(1e30))),
                    "decodes to values beyond ±65504"),
    "values-dtype": (lambda m, t: join(*with_slot(m, t, lambda v: v.update({
        "input1.0/cond0/k": v["input1.0/cond0/k"].to(torch.int64)}))), "holds input1.0/cond0/k as int64"),
    "values-shape": (lambda m, t: join(*with_slot(m, t, lambda v: v.update({
        "input1.0/cond0/k": v["input1.0/cond0/k"][:3]}))), r"holds input1.0/cond0/k as float32 \[3, 8\]"),
    "values-extra": (lambda m, t: join(*with_slot(m, t, lambda v: v.update({"input9.0/cond0/k": torch.zeros(2)}))),
                     "holds a tensor 'input9.0/cond0/k' that no layer of the manifest has"),
    "values-not-safetensors": (lambda m, t: join(*with_slot_bytes(m, t, b"\x80\x04K\x01.")),
                               f"{SLOT} is not a valid safetensors file"),
    "preview-not-png": (lambda m, t: join(m, {**t, PREVIEW: b"GIF89a"}), "preview.png is not a PNG image"),
}


def with_slot_bytes(metadata: dict, tensors: dict, data: bytes) -> tuple[dict, dict]:
    manifest = manifest_of(metadata)
    manifest["slots"][0]["files"][0].update(bytes=len(data), sha256=sha256_bytes(data))
    return {**metadata, bundle.KEYS["manifest"]: json.dumps(seal_manifest(manifest))}, {**tensors, SLOT: data}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("sender")
    store = ReferenceStore(folder / "store")
    make_reference(store, "cat")
    return bundle.export_reference(store, "cat", folder).read_bytes()


@pytest.mark.parametrize("case", list(TAMPERED))
def test_a_tampered_file_is_refused_by_name_and_changes_nothing(tmp_path, exported, case):
    tamper, why = TAMPERED[case]
    receiver = ReferenceStore(tmp_path / "receiver")
    make_reference(receiver, "dog")
    before = snapshot(receiver.path("dog"), with_manifest=True)
    file = tmp_path / "cat.refdrop.safetensors"
    file.write_bytes(tamper(*split(exported)))
    with pytest.raises(RefDropError, match=f"^RefDrop: cat.refdrop.safetensors was not imported: .*{why}"):
        bundle.import_reference(receiver, file)
    assert receiver.names() == ["dog"] and leftovers(receiver.root) == []
    assert snapshot(receiver.path("dog"), with_manifest=True) == before


def test_the_untampered_file_passes_the_same_checks(tmp_path, exported):
    file = tmp_path / "cat.refdrop.safetensors"
    file.write_bytes(join(*split(exported)))  # what every tampering case starts from, put together again
    assert bundle.import_reference(ReferenceStore(tmp_path / "receiver"), file) == "cat"


def test_an_oversized_picture_is_refused_before_it_is_read(tmp_path, exported, monkeypatch):
    monkeypatch.setattr(bundle, "MAX_PREVIEW_BYTES", 16)
    file = tmp_path / "cat.refdrop.safetensors"
    file.write_bytes(exported)
    with pytest.raises(RefDropError, match=f"preview.png has {len(PNG)} bytes, more than the 16 a picture may have"):
        bundle.import_reference(ReferenceStore(tmp_path / "receiver"), file)


def test_a_compressed_slot_that_claims_to_inflate_beyond_its_layers_is_refused(tmp_path):
    sender = ReferenceStore(tmp_path / "sender")
    writer = ReferenceWriter(sender, "cat", False, file_encoding="zstd")
    for index, sigma in enumerate((14.6, 1.2)):
        writer.put_slot(_slot(index, sigma), 0, slot_tensors(0, index), lambda: None)
    writer.finish("sd15", GENERATION, recording((14.6, 1.2)), PNG)
    assert writer.wait(30) and writer.status.state == "saved", writer.status.message
    metadata, tensors = split(bundle.export_reference(sender, "cat", tmp_path).read_bytes())
    file = tmp_path / "bomb.refdrop.safetensors"
    file.write_bytes(join(resealed(metadata, lambda m: m["slots"][0]["files"][0].update(raw_bytes=2**40)), tensors))
    with pytest.raises(RefDropError, match="slot_0000_0.safetensors.zst claims to hold 1099511627776 bytes, more than"):
        bundle.import_reference(ReferenceStore(tmp_path / "receiver"), file)


def _slot(index, sigma):
    from lib_refdrop.reference.sigmas import Slot

    return Slot(index, sigma, 0)


def test_a_link_or_a_bad_name_is_refused(tmp_path, exported):
    receiver = ReferenceStore(tmp_path / "receiver")
    (tmp_path / "real").write_bytes(exported)
    (tmp_path / "cat.refdrop.safetensors").symlink_to(tmp_path / "real")
    with pytest.raises(RefDropError, match="cat.refdrop.safetensors was not imported: .*is a link"):
        bundle.import_reference(receiver, tmp_path / "cat.refdrop.safetensors")
    with pytest.raises(RefDropError, match="may not contain '/'"):
        bundle.import_reference(receiver, tmp_path / "real", "../escape")
    assert receiver.names() == [] and not (tmp_path / "escape").exists()


# -- dropped into the store -------------------------------------------------------------------------------------------


def test_a_file_dropped_into_the_store_is_listed_after_import_and_a_refused_one_stays(tmp_path, exported, capsys):
    receiver = ReferenceStore(tmp_path / "receiver")
    (receiver.root / "tom.refdrop.safetensors").write_bytes(exported)  # renamed by the user: its name is the file's
    bad = receiver.root / "bad.refdrop.safetensors"
    bad.write_bytes(exported[:-1])
    listed = library.list_references(receiver)
    assert [entry["name"] for entry in listed["references"]] == ["tom"]
    assert not (receiver.root / "tom.refdrop.safetensors").exists() and bad.exists()
    assert receiver.manifest("tom")["name"] == "tom"
    printed = capsys.readouterr().out
    assert "bad.refdrop.safetensors was not imported" in printed and f"stays in {receiver.root}" in printed
    library.list_references(receiver)
    assert capsys.readouterr().out == ""  # said once per version of the file
    (receiver.root / "tom.refdrop.safetensors").write_bytes(exported)  # the name is taken now
    refused = bundle.adopt_received(receiver)
    assert set(refused) == {"tom.refdrop.safetensors", "bad.refdrop.safetensors"}
    assert refused["tom.refdrop.safetensors"] == (
        "RefDrop: tom.refdrop.safetensors was not imported: a reference named 'tom' already exists; rename the file "
        "(its name is the reference's) or delete that reference")
    assert receiver.names() == ["tom"] and (receiver.root / "tom.refdrop.safetensors").exists()


# -- the library's entry points -------------------------------------------------------------------------------------


def test_library_export_and_import(stores):
    sender, receiver = stores
    make_reference(sender, "cat")
    file, received, size = library.export(sender, "cat")
    with received:
        assert file == "cat.refdrop.safetensors" and os.fstat(received.fileno()).st_size == size
        answer = library.import_file(receiver, received, "tom")
    assert answer["name"] == "tom" and answer["summary"]["family"] == "sd15"
    with pytest.raises(library.Unusable, match="the received file was not imported: it is not a RefDrop"):
        with open(os.devnull, "rb") as empty:
            library.import_file(receiver, empty)
    exported = library.export(sender, "cat")[1]
    with exported, pytest.raises(ReferenceExists):
        library.import_file(receiver, exported, "tom")
    with pytest.raises(RefDropError, match="may not contain"):
        library.import_file(receiver, exported, "a/b")
    assert standalone.import_reference is bundle.import_reference
    assert standalone.export_reference is bundle.export_reference


# -- the WebUI panel --------------------------------------------------------------------------------------------------


def test_the_panel_exports_a_download_and_imports_an_upload(stores):
    import gradio as gr

    from lib_refdrop.webui import panel

    sender, receiver = stores
    make_reference(sender, "cat")
    with gr.Blocks() as demo:
        controls = panel.build(elem_id=lambda item: f"refdrop_{item}", get_store=lambda: receiver)

    def wired(component, trigger):
        return [demo.fns[index].fn for index, dependency in enumerate(demo.dependencies)
                if component._id in dependency["targets"] and dependency["trigger"] == trigger]

    first, message = panel.export_file(sender, "cat")
    assert first.endswith("/cat.refdrop.safetensors") and "download **cat.refdrop.safetensors**" in message
    path, _ = panel.export_file(sender, "cat")
    assert not os.path.exists(first) and os.path.exists(path)  # the previous export's folder is gone
    assert panel.export_file(sender, "") == (None, "Select a reference to export.")
    on_import, on_slots = wired(controls.extras["import_file"], "upload")
    upload = type("TempFile", (), {"name": path})()  # gradio 3's temporary file object; gradio 4 gives the path
    dropdown, status, shown, cleared = on_import(upload, {"choices": [], "status": "", "polls": 0})
    assert dropdown["value"] == "cat" and "cat" in dropdown["choices"] and shown["choices"] == ["cat"]
    assert status == "Imported **cat.refdrop.safetensors** as reference **cat**." and cleared["value"] is None
    assert all("cat" in update["choices"] for update in on_slots("", ""))  # references 2 and 3 list it too
    message, choices, name = panel.import_file(receiver, path)
    assert name is None and "a reference named 'cat' already exists" in message and choices == ["cat"]
    (on_export,) = wired(controls.extras["export"], "click")
    download, message = on_export("cat")
    assert download["value"].endswith("cat.refdrop.safetensors") and "Reference **cat** is one file" in message


# -- what a file costs -------------------------------------------------------------------------------------------------


def test_the_size_formula_is_what_an_exported_trajectory_holds(stores, tmp_path, unet_host):
    from benchmarks.share import overhead_bytes, tensors_of_file, trajectory_tensor_bytes

    sender, _ = stores
    save(unet_host, sender, "fox", profile="trajectory", **TINY)
    data = bundle.export_reference(sender, "fox", tmp_path).read_bytes()
    slots = tensors_of_file(data)
    first = slots[min(slots)]
    latent, text = first["latent"], first["conditioning/cond0/c_crossattn"]
    assert all(t.dtype == torch.float32 for slot in slots.values() for t in slot.values())  # the CPU's precision
    stored = sum(t.numel() * t.element_size() for slot in slots.values() for t in slot.values())
    assert stored == trajectory_tensor_bytes(latent.numel(), TINY["steps"], text.numel(), 2, 4)
    assert overhead_bytes(data) < 8_000  # headers and the manifest: the formula leaves out only these and pictures


def test_the_readmes_sizes_are_the_formulas():
    import re
    from pathlib import Path

    from benchmarks.share import ITEMSIZES, SIZES, megabytes, trajectory_file_bytes

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Share a character"):]
    for label, (arch, side) in SIZES.items():
        row = re.search(rf"^\| {re.escape(label)} \| ([^|]+) \| ([^|]+) \|", section, re.MULTILINE)
        assert row is not None, label
        assert [cell.strip() for cell in row.groups()] == [
            megabytes(trajectory_file_bytes(arch, side, ITEMSIZES[precision])) for precision in ("fp16", "fp32")]
