"""Hostile and broken input files (issue 17: F7-F10, F14, F15): one line, exit 2, nothing written, inputs untouched."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from helpers import tree_digest

from sanatool.errors import InputError, ModelDirError
from sanatool.io.jsonl import parse_json, read_json_object, read_jsonl
from sanatool.io.safetensors import read_header


def one_line_error(res, code: int = 2, message: str = "") -> None:
    assert res.code == code, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert message in lines[0], res.stderr
    assert "Traceback" not in res.stderr


# --- F7 / F8: safetensors headers, by the safetensors library's own rules ---------------------------


def _file(header: dict | None = None, data: bytes = b"", raw: bytes | None = None) -> bytes:
    text = raw if raw is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


_T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
_ENTRY = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}'
SAFETENSORS_CASES = {
    "good": _file({"a": _T}, bytes(8)),
    "two tensors": _file(
        {"a": _T, "b": {"dtype": "F16", "shape": [2, 2], "data_offsets": [8, 16]}}, bytes(16)
    ),
    "empty": _file({}),
    "zero-size tensors": _file(
        {"a": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}, "b": _T}, bytes(8)
    ),
    "scalar": _file({"a": {"dtype": "F64", "shape": [], "data_offsets": [0, 8]}}, bytes(8)),
    "metadata": _file({"a": _T, "__metadata__": {"format": "pt"}}, bytes(8)),
    "null metadata": _file({"a": _T, "__metadata__": None}, bytes(8)),
    "padded header": _file(raw=_ENTRY + b"}    ", data=bytes(8)),
    "extra entry key": _file({"a": {**_T, "note": 1}}, bytes(8)),
    "trailing bytes": _file({"a": _T}, bytes(9)),
    "gap before": _file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12)),
    "gap between": _file({"a": _T, "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}, bytes(16)),
    "overlap": _file({"a": _T, "b": _T}, bytes(8)),
    "data without tensors": _file({}, bytes(1)),
    "float shape": _file(raw=b'{"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}}', data=bytes(8)),
    "float offset": _file(raw=b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8.0]}}', data=bytes(8)),
    "bool shape": _file(raw=b'{"a":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}}', data=bytes(4)),
    "negative shape": _file(raw=b'{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}', data=bytes(8)),
    "infinite shape": _file(
        raw=b'{"a":{"dtype":"F32","shape":[Infinity],"data_offsets":[0,8]}}', data=bytes(8)
    ),
    "NaN anywhere": _file(raw=_ENTRY + b',"x":NaN}', data=bytes(8)),
    "three offsets": _file(raw=b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}}', data=bytes(8)),
    "no shape": _file({"a": {"dtype": "F32", "data_offsets": [0, 8]}}, bytes(8)),
    "entry not an object": _file({"a": [1, 2]}, bytes(8)),
    "lowercase dtype": _file({"a": {**_T, "dtype": "f32"}}, bytes(8)),
    "size mismatch": _file({"a": {**_T, "shape": [3]}}, bytes(8)),
    "overflowing shape": _file({"a": {**_T, "shape": [2**62, 2**62]}}, bytes(8)),
    "metadata list": _file({"a": _T, "__metadata__": []}, bytes(8)),
    "metadata string": _file({"a": _T, "__metadata__": "x"}, bytes(8)),
    "metadata number value": _file({"a": _T, "__metadata__": {"k": 1}}, bytes(8)),
    "header a list": _file([1]),
    "200000 brackets": _file(raw=b"[" * 200_000),
    "deep object": _file(raw=b'{"a":' * 50_000),
    "UTF-16 header": _file(raw=_ENTRY.decode().encode("utf-16") + "}".encode("utf-16-le"), data=bytes(8)),
    "trailing garbage": _file(raw=_ENTRY + b"}x", data=bytes(8)),
    "header past the end": struct.pack("<Q", 1000) + b"{}",
    "shorter than 8 bytes": b"\x02\x00",
}


def _library_accepts(blob: bytes) -> bool:
    import safetensors

    try:
        safetensors.deserialize(blob)
    except Exception:  # noqa: BLE001 - any refusal by the library counts
        return False
    return True


def _we_accept(path: Path) -> bool:
    try:
        read_header(path)
    except ModelDirError:
        return False
    return True


@pytest.mark.parametrize("case", sorted(SAFETENSORS_CASES))
def test_read_header_accepts_exactly_what_safetensors_accepts(case, tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(SAFETENSORS_CASES[case])
    assert _we_accept(path) == _library_accepts(SAFETENSORS_CASES[case])


def test_read_header_reports_offsets_and_metadata(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(SAFETENSORS_CASES["two tensors"])
    tensors, _ = read_header(path)
    header_end = len(SAFETENSORS_CASES["two tensors"]) - 16
    assert (tensors["b"].start - header_end, tensors["b"].end - header_end) == (8, 16)
    path.write_bytes(SAFETENSORS_CASES["metadata"])
    assert read_header(path)[1] == {"format": "pt"}


def test_files_we_write_pass_the_library(tiny_pipeline):
    for weights in sorted(tiny_pipeline.rglob("*.safetensors")):
        assert _we_accept(weights) and _library_accepts(weights.read_bytes()), weights


@pytest.mark.parametrize(
    "case",
    [
        "200000 brackets",
        "metadata list",
        "metadata string",
        "infinite shape",
        "gap between",
        "trailing bytes",
    ],
)
def test_info_on_a_hostile_weights_file_is_one_line(case, cli, tiny_transformer, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_transformer, model)
    (model / "diffusion_pytorch_model.safetensors").write_bytes(SAFETENSORS_CASES[case])
    before = tree_digest(model)
    one_line_error(cli("info", model), message="diffusion_pytorch_model.safetensors")
    assert tree_digest(model) == before


def test_parse_json_refuses_what_json_does_not_allow():
    assert parse_json(b'{"a": [1, 2.5, "\\u00e9"]}') == {"a": [1, 2.5, "é"]}
    assert parse_json('{"a": -Infinity}')["a"] == float("-inf")  # diffusers' scheduler configs hold it
    for text in ("[" * 200_000, b"\xff{}", "{} x"):
        with pytest.raises(ValueError):
            parse_json(text)
    for text in ('{"a": NaN}', "[Infinity]", "[-Infinity]"):
        with pytest.raises(ValueError):
            parse_json(text, nonfinite=False)


def test_deep_json_files_are_input_errors(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(InputError, match="nested too deeply"):
        read_json_object(deep, "importance file")
    lines = tmp_path / "deep.jsonl"
    lines.write_text('{"prompt": "a"}\n' + "[" * 200_000 + "\n")
    with pytest.raises(InputError, match=r"deep.jsonl:2: not valid JSON \(nested too deeply\)"):
        read_jsonl(lines)


def test_prune_with_a_deeply_nested_importance_file(cli, tiny_pipeline, tmp_path):
    importance = tmp_path / "importance.json"
    importance.write_text('{"scores": ' + "[" * 200_000 + "]" * 200_000 + "}")
    out = tmp_path / "small"
    one_line_error(
        cli("prune", tiny_pipeline, "--keep", "2", "--importance", importance, "-o", out), message="nested"
    )
    assert not out.exists()


# --- F9: the latent cache never goes into an input --------------------------------------------------


def test_default_cache_root_follows_xdg(monkeypatch, tmp_path):
    from sanatool.training.cache import default_cache_root

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "sanatool"
    for value in ("", "relative/dir"):  # unset or invalid (XDG: relative paths are ignored)
        monkeypatch.setenv("XDG_CACHE_HOME", value)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        assert default_cache_root() == tmp_path / "home" / ".cache" / "sanatool"


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from sanatool.shapes.dataset import write_shapes_dataset

    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", 4, seed=3)


@pytest.mark.parametrize("where", ["model", "model/vae", "data", "data/sub"])
def test_cache_dir_inside_an_input_is_refused(where, cli, tiny_pipeline, small_data, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_pipeline, model)
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    before = (tree_digest(model), tree_digest(data))
    out = tmp_path / "ft"
    res = cli("finetune", model, "--data", data, "-o", out, "--steps", "1", "--cache-dir", tmp_path / where)
    one_line_error(res, message="--cache-dir")
    assert (tree_digest(model), tree_digest(data)) == before
    assert not out.exists()


# --- F15: unreadable manifests and decompression bombs ----------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A small PNG file whose header claims ``width``×``height`` pixels (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.fixture
def ground_truth(tmp_path):
    from sanatool.shapes import evaluation_suite, write_ground_truth_samples

    suite = evaluation_suite()
    return write_ground_truth_samples(suite[::50], tmp_path / "gt", seed=3)


def test_eval_and_judge_refuse_a_manifest_that_is_not_utf8(cli, ground_truth, tmp_path):
    manifest = ground_truth / "manifest.jsonl"
    manifest.write_bytes(manifest.read_bytes() + b'{"prompt": "\xff\xfe"}\n')
    before = tree_digest(ground_truth)
    one_line_error(cli("eval", ground_truth), message="not UTF-8")
    out = tmp_path / "picks"
    one_line_error(cli("judge", ground_truth, "-o", out, "--judge", "shapes"), message="not UTF-8")
    assert not out.exists() and tree_digest(ground_truth) == before


@pytest.mark.parametrize("side", [30000, 9000])
def test_eval_lists_a_bomb_and_scores_the_rest(side, cli, ground_truth):
    rows = [json.loads(line) for line in (ground_truth / "manifest.jsonl").read_text().splitlines()]
    (ground_truth / rows[0]["path"]).write_bytes(png_claiming(side, side))
    res = cli("eval", ground_truth, "--json")
    # eval's contract for a partly unusable manifest: the rest scored, every problem listed, exit 1.
    assert res.code == 1 and "could not be scored" in res.stderr, res.stderr
    report = json.loads(res.stdout)
    assert report["scored"] == len(rows) - 1 and report["overall"] == 1.0
    assert [p.split(":")[1] for p in report["problems"]] == ["1"], report["problems"]
    assert rows[0]["path"] in report["problems"][0]


def test_judge_refuses_a_bomb(cli, ground_truth, tmp_path):
    rows = [json.loads(line) for line in (ground_truth / "manifest.jsonl").read_text().splitlines()]
    (ground_truth / rows[1]["path"]).write_bytes(png_claiming(30000, 30000))
    out = tmp_path / "picks"
    one_line_error(cli("judge", ground_truth, "-o", out, "--judge", "shapes"), message=rows[1]["path"])
    assert not out.exists()


def test_finetune_refuses_a_bomb_in_the_data(cli, tiny_pipeline, small_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    first = json.loads((data / "metadata.jsonl").read_text().splitlines()[0])["file_name"]
    (data / first).write_bytes(png_claiming(30000, 30000))
    before = tree_digest(data)
    out = tmp_path / "ft"
    one_line_error(cli("finetune", tiny_pipeline, "--data", data, "-o", out, "--steps", "1"), message=first)
    assert not out.exists() and tree_digest(data) == before


# --- F10 / F14: the VAE, text encoder and tokenizer are checked before anything is built ------------


def _pipeline_copy(source: Path, root: Path) -> Path:
    model = root / "model"
    shutil.copytree(source, model)
    return model


def _edit_config(path: Path, **changes) -> None:
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


def _to_pickle(component: Path, name: str) -> None:
    """Replace a component's safetensors weights by the same tensors in a torch.save pickle."""
    import torch
    from safetensors.torch import load_file

    weights = next(component.glob("*.safetensors"))
    torch.save(load_file(weights), component / name)
    weights.unlink()


class _Payload:
    """Unpickling this runs ``touch MARKER``: a weights file that attacks whoever loads it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _sample(cli, model: Path, out: Path, *extra: str):
    return cli("sample", model, "--prompt", "a red circle", "-n", "1", "--steps", "1", "-o", out, *extra)


def _hostile_vae_wide(vae: Path) -> None:
    _edit_config(
        vae / "config.json", encoder_block_out_channels=[200000] * 3, decoder_block_out_channels=[200000] * 3
    )


def _hostile_vae_deep(vae: Path) -> None:
    _edit_config(
        vae / "config.json",
        **{
            f"{side}_{key}": [value] * 3000
            for side in ("encoder", "decoder")
            for key, value in (
                ("block_out_channels", 16),
                ("block_types", "ResBlock"),
                ("layers_per_block", 1),
                ("qkv_multiscales", []),
            )
        },
    )


def _hostile_vocab(model: Path) -> None:
    _edit_config(model / "text_encoder" / "config.json", vocab_size=10**9)


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("200000 channels", lambda m: _hostile_vae_wide(m / "vae"), "implies"),
        ("3000 stages", lambda m: _hostile_vae_deep(m / "vae"), "3000 entries"),
        ("vocab 1e9", _hostile_vocab, "embed_tokens.weight has shape"),
        (
            "layers 1e6",
            lambda m: _edit_config(m / "text_encoder" / "config.json", num_hidden_layers=10**6),
            "at most",
        ),
        (
            "a string for channels",
            lambda m: _edit_config(m / "vae" / "config.json", latent_channels="x"),
            "config.json",
        ),
        ("no tokenizer", lambda m: [p.unlink() for p in (m / "tokenizer").iterdir()], "no tokenizer files"),
        (
            "truncated VAE",
            lambda m: (m / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 9),
            "vae",
        ),
        ("pickle VAE", lambda m: _to_pickle(m / "vae", "diffusion_pytorch_model.bin"), "--allow-pickle"),
    ],
)
def test_sample_refuses_bad_components_before_building(name, edit, message, cli, tiny_pipeline, tmp_path):
    model = _pipeline_copy(tiny_pipeline, tmp_path)
    edit(model)
    before = tree_digest(model)
    out = tmp_path / "samples"
    one_line_error(_sample(cli, model, out), message=message)
    assert not out.exists() and tree_digest(model) == before


def test_allow_pickle_loads_benign_pickle_weights(cli, tiny_pipeline, tmp_path):
    model = _pipeline_copy(tiny_pipeline, tmp_path)
    reference = _sample(cli, tiny_pipeline, tmp_path / "reference")
    assert reference.code == 0, reference.stderr
    _to_pickle(model / "vae", "diffusion_pytorch_model.bin")
    _to_pickle(model / "text_encoder", "pytorch_model.bin")
    res = _sample(cli, model, tmp_path / "samples", "--allow-pickle")
    assert res.code == 0, res.stderr
    image = "images/p00000_c000.png"
    assert (tmp_path / "samples" / image).read_bytes() == (tmp_path / "reference" / image).read_bytes()


@pytest.mark.parametrize("component", ["vae", "text_encoder"])
def test_a_malicious_pickle_never_runs(component, cli, tiny_pipeline, small_data, tmp_path):
    import torch

    model = _pipeline_copy(tiny_pipeline, tmp_path)
    marker = tmp_path / "pwned"
    (next((model / component).glob("*.safetensors"))).unlink()
    torch.save({"weight": _Payload(marker)}, model / component / "pytorch_model.bin")
    before = tree_digest(model)
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "sanatool"
    caches_before = sorted(cache.iterdir()) if cache.exists() else []
    for extra in ((), ("--allow-pickle",)):
        one_line_error(_sample(cli, model, tmp_path / "samples", *extra), message=component)
        res = cli("finetune", model, "--data", small_data, "-o", tmp_path / "ft", "--steps", "1", *extra)
        one_line_error(res, message=component)
        res = cli(
            "importance", model, "-o", tmp_path / "imp.json", "--num-prompts", "1", "--steps", "1", *extra
        )
        one_line_error(res, message=component)
    assert not marker.exists()
    assert not (tmp_path / "samples").exists() and not (tmp_path / "ft").exists()
    assert not (tmp_path / "imp.json").exists() and tree_digest(model) == before
    assert (sorted(cache.iterdir()) if cache.exists() else []) == caches_before
