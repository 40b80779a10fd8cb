"""Bundles that lie: a graph that does not match its manifest, an edited manifest, paths that leave the bundle."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import pytest

from edge.bundle import load_bundle
from edge.errors import BundleError
from edge.fileio import sha256_file
from edge.manifest import DIGEST_KEY, manifest_digest, read_manifest, write_manifest
from signguard.cli import main

from .helpers import colour_frame, edit_manifest


def _run(bundle: Path, tmp_path: Path) -> list:
    frames = tmp_path / "imgs"
    frames.mkdir(exist_ok=True)
    cv2.imwrite(str(frames / "0.png"), colour_frame("red", (24, 8, 48, 48)))
    return ["run", "--bundle", str(bundle), "--source", str(frames), "--quiet"]


def _one_line(capsys: pytest.CaptureFixture, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


def test_a_graph_whose_input_disagrees_with_the_manifest_is_refused_at_load(
        tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Fault 7: the manifest says 64x64 inputs (and preprocesses to 64), the graph takes 32x32."""
    def edit(m: dict) -> None:
        m["input"]["shape"] = [-1, 3, 64, 64]
        m["preprocess"]["input_size"] = 64

    edit_manifest(tiny_bundle, edit)
    with pytest.raises(BundleError, match=r"model\.onnx: the graph's input 'images' has shape \[\?, 3, 32, 32\] "
                                          r"but .*manifest\.json says input\.shape \[-1, 3, 64, 64\]"):
        load_bundle(tiny_bundle)
    assert main(_run(tiny_bundle, tmp_path)) == 1
    _one_line(capsys, "model.onnx", "input.shape [-1, 3, 64, 64]")


def test_a_graph_with_another_number_of_classes_is_refused_at_load(tiny_bundle: Path) -> None:
    def edit(m: dict) -> None:
        m["classes"] = m["classes"] + ["c5"]
        m["output"]["num_classes"] = 6

    edit_manifest(tiny_bundle, edit)
    with pytest.raises(BundleError, match=r"output 'logits' has shape \[\?, 5\] but .* lists 6 classes"):
        load_bundle(tiny_bundle)


def test_dynamic_and_matching_dims_load(tiny_bundle: Path) -> None:
    """A fixed batch in the manifest against the graph's dynamic one is fine; so is the exporter's -1."""
    edit_manifest(tiny_bundle, lambda m: m["input"].update(shape=[8, 3, 32, 32]))
    assert load_bundle(tiny_bundle).backend.io_shapes == ([None, 3, 32, 32], [None, 5])


def test_an_edited_manifest_is_refused(tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Fault 13: swapping two classes changes no model file, only the manifest; its digest catches it."""
    def swap(m: dict) -> None:
        m["classes"][0], m["classes"][1] = m["classes"][1], m["classes"][0]

    where = edit_manifest(tiny_bundle, swap, reseal=False)
    with pytest.raises(BundleError, match=r"^%s: manifest_sha256 mismatch .* edited or corrupted" % where):
        load_bundle(tiny_bundle)
    assert main(_run(tiny_bundle, tmp_path)) == 1
    _one_line(capsys, where, "manifest_sha256 mismatch")
    # re-indenting is not an edit: the digest is over the canonical JSON
    edit_manifest(tiny_bundle, swap, reseal=False)
    text = (tiny_bundle / "manifest.json").read_text()
    (tiny_bundle / "manifest.json").write_text(text.replace(",", ",\n   "))
    assert load_bundle(tiny_bundle).classes[:2] == ["c0", "c1"]


def test_a_manifest_without_a_digest_is_refused_with_the_fix(tiny_bundle: Path) -> None:
    edit_manifest(tiny_bundle, lambda m: m.pop(DIGEST_KEY), reseal=False)
    with pytest.raises(BundleError, match=r"no manifest_sha256, .* re-export the bundle"):
        load_bundle(tiny_bundle)
    assert read_manifest(tiny_bundle, verify_hashes=False)["classes"][0] == "c0"  # what verify_hashes=False skips


def test_write_manifest_seals_what_it_writes(tiny_bundle: Path) -> None:
    m = read_manifest(tiny_bundle)
    assert m[DIGEST_KEY] == manifest_digest(m)
    m["name"] = "renamed"  # a rewrite (e.g. a new engine) recomputes the digest
    write_manifest(tiny_bundle, m)
    assert load_bundle(tiny_bundle).name == "renamed"


@pytest.mark.parametrize("spelling", ["absolute", "dotdot"])
def test_files_outside_the_bundle_are_refused(spelling: str, tiny_bundle: Path, tmp_path: Path) -> None:
    """Fault 13: a listed file with a correct hash is still refused when it lies outside the bundle."""
    outside = tmp_path / "outside.txt"
    outside.write_text("host\n")
    name = str(outside) if spelling == "absolute" else os.path.relpath(str(outside), str(tiny_bundle))
    edit_manifest(tiny_bundle, lambda m: m["files"].update({name: sha256_file(outside)}))
    with pytest.raises(BundleError, match=r"files: %r is not a relative path inside the bundle" % name):
        load_bundle(tiny_bundle)
    with pytest.raises(BundleError, match="not a relative path inside the bundle"):
        write_manifest(tiny_bundle, read_manifest(tiny_bundle, verify_hashes=False), extra_files=[name])


def test_a_symlink_out_of_the_bundle_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("host\n")
    (tiny_bundle / "notes.txt").symlink_to(outside)
    edit_manifest(tiny_bundle, lambda m: m["files"].update({"notes.txt": sha256_file(outside)}))
    with pytest.raises(BundleError, match=r"notes\.txt: resolves to .*outside\.txt, outside the bundle"):
        load_bundle(tiny_bundle)


def test_an_unknown_key_inside_input_is_refused(tiny_bundle: Path) -> None:
    edit_manifest(tiny_bundle, lambda m: m["input"].update(mean=[0.5, 0.5, 0.5]))
    with pytest.raises(BundleError, match=r"input: unknown field\(s\) \['mean'\]"):
        load_bundle(tiny_bundle)


def test_num_classes_must_agree_with_classes(tiny_bundle: Path) -> None:
    edit_manifest(tiny_bundle, lambda m: m["output"].update(num_classes=4))
    with pytest.raises(BundleError, match=r"output\.num_classes: 4, but 'classes' lists 5 names"):
        load_bundle(tiny_bundle)


def test_a_model_file_given_as_the_bundle_says_so(tiny_bundle: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    """Fault 14: `--bundle path/model.onnx` is a file: say that and point at the folder."""
    model = tiny_bundle / "model.onnx"
    with pytest.raises(BundleError, match=r"model\.onnx: is a file, not a bundle; pass the bundle folder that "
                                          r"holds manifest\.json \(%s\)" % tiny_bundle):
        load_bundle(model)
    assert main(_run(model, tmp_path)) == 1
    _one_line(capsys, str(model), "is a file", "bundle folder")
