"""Safetensors reading and writing: compatibility with the safetensors library, atomicity, bad headers."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from ettcli.errors import EttError
from ettcli.stfile import Source, read_array, read_header, write_file


def test_files_written_by_ett_load_in_safetensors(tmp_path):
    from safetensors.numpy import load_file

    arrays = {
        "a": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b_mask": np.array([[True, False], [False, True]]),
        "n": np.array(7, dtype=np.int64),  # 0-d like num_batches_tracked
        "h": np.linspace(0, 1, 5).astype(np.float16),
    }
    path = tmp_path / "t.safetensors"
    write_file(path, [(k, Source.of_array(v)) for k, v in arrays.items()], {"k": "v"})
    loaded = load_file(path)
    assert set(loaded) == set(arrays)
    for k, v in arrays.items():
        assert loaded[k].dtype == v.dtype and loaded[k].shape == v.shape
        np.testing.assert_array_equal(loaded[k], v)
    assert read_header(path).metadata == {"k": "v"}


def test_files_written_by_safetensors_torch_load_here(tmp_path):
    import torch
    from safetensors.torch import save_file

    tensors = {"w": torch.randn(4, 3), "bf": torch.randn(6).to(torch.bfloat16), "i": torch.tensor(3)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, path, metadata={"x": "y"})
    header = read_header(path)
    assert header.metadata == {"x": "y"}
    np.testing.assert_array_equal(read_array(path, header.tensors["w"]), tensors["w"].numpy())
    np.testing.assert_array_equal(read_array(path, header.tensors["bf"]), tensors["bf"].float().numpy())
    assert read_array(path, header.tensors["i"]).shape == ()


def test_streamed_copy_from_another_file(tmp_path):
    src = tmp_path / "src.safetensors"
    big = np.random.default_rng(0).standard_normal((1000, 500)).astype(np.float32)
    write_file(src, [("big", Source.of_array(big))], {})
    info = read_header(src).tensors["big"]
    dst = tmp_path / "dst.safetensors"
    write_file(dst, [("x", Source.of_file(src, info)), ("y", Source.of_file(src, info))], {})
    h = read_header(dst)
    np.testing.assert_array_equal(read_array(dst, h.tensors["y"]), big)


def test_failed_write_leaves_old_file_and_no_temporaries(tmp_path):
    path = tmp_path / "t.safetensors"
    write_file(path, [("a", Source.of_array(np.ones(3, np.float32)))], {})
    before = path.read_bytes()
    missing = Source("F32", (3,), path=tmp_path / "gone.safetensors", start=0, end=12)
    with pytest.raises(EttError, match="gone.safetensors: No such file"):
        write_file(path, [("a", missing)], {})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]


def _raw(tmp_path, header_bytes: bytes, length: int | None = None, data: bytes = b""):
    path = tmp_path / "bad.safetensors"
    n = len(header_bytes) if length is None else length
    path.write_bytes(struct.pack("<Q", n) + header_bytes + data)
    return path


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("short", "too short"),
        ("absurd", "header length field says"),
        ("json", "not valid JSON"),
        ("offsets", "truncated or damaged"),
        ("dtype", "does not read"),
    ],
)
def test_bad_headers(tmp_path, case, fragment):
    good = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    if case == "short":
        path = tmp_path / "bad.safetensors"
        path.write_bytes(b"\x01\x02")
    elif case == "absurd":
        path = _raw(tmp_path, good, length=2**62, data=b"\0" * 8)
    elif case == "json":
        path = _raw(tmp_path, b"{not json", data=b"")
    elif case == "offsets":
        path = _raw(tmp_path, good, data=b"\0" * 4)  # 4 of 8 bytes: truncated
    else:
        bad = json.dumps({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
        path = _raw(tmp_path, bad, data=b"\0" * 8)
    with pytest.raises(EttError) as exc:
        read_header(path)
    assert fragment in str(exc.value) and str(path) in str(exc.value)


def _entry(shape, offsets, dtype="F32"):
    return {"dtype": dtype, "shape": shape, "data_offsets": offsets}


@pytest.mark.parametrize(
    "header, data_len, name, fragment",
    [
        ({"a": _entry([2], [0, 8]), "b": _entry([2], [12, 20])}, 20, "b", "gap of 4 bytes"),  # shifted
        ({"a": _entry([2], [4, 12])}, 12, "a", "gap of 4 bytes"),  # shifted from the start
        ({"a": _entry([2], [0, 8]), "b": _entry([2], [0, 8])}, 8, "b", "overlaps"),  # sharing bytes
        ({"a": _entry([2], [0, 8]), "b": _entry([2], [4, 12])}, 12, "b", "overlaps"),
        ({"b": _entry([2], [8, 16]), "a": _entry([2], [0, 8])}, 20, "b", "ends at byte 16"),  # bytes left over
        ({"a": _entry([2], [0.0, 8])}, 8, "a", "data_offsets [0.0, 8]"),
        ({"a": _entry([2], ["0", "8"])}, 8, "a", "two non-negative integers"),
        ({"a": _entry([2], [False, 8])}, 8, "a", "two non-negative integers"),
        ({"a": _entry([2], [0, 8, 8])}, 8, "a", "two non-negative integers"),
        ({"a": _entry([2.5], [0, 8])}, 8, "a", "shape [2.5]"),
        ({"a": _entry([2.0], [0, 8])}, 8, "a", "non-negative integers"),
        ({"a": _entry([-2], [0, 8])}, 8, "a", "shape [-2]"),
        ({"a": _entry([True, 2], [0, 8])}, 8, "a", "non-negative integers"),
        ({"a": _entry([2], [8, 0])}, 8, "a", "byte range [8, 0)"),
    ],
)
def test_damaged_headers_are_refused_naming_the_tensor(tmp_path, cli, header, data_len, name, fragment):
    path = _raw(tmp_path, json.dumps(header).encode(), data=b"\0" * data_len)
    with pytest.raises(EttError) as exc:
        read_header(path)
    assert f"tensor '{name}'" in str(exc.value) and fragment in str(exc.value) and str(path) in str(exc.value)
    from conftest import assert_user_error

    assert_user_error(cli("inspect", path), f"'{name}'", fragment)


def test_duplicate_names_in_the_header_are_refused(tmp_path, cli):
    from conftest import assert_user_error

    a = json.dumps(_entry([2], [0, 8]))
    path = _raw(tmp_path, f'{{"a":{a},"a":{a}}}'.encode(), data=b"\0" * 8)  # json.loads would keep one silently
    with pytest.raises(EttError, match="tensor 'a' is listed twice"):
        read_header(path)
    assert_user_error(cli("inspect", path), "'a' is listed twice")
    inner = '{"a":{"dtype":"F32","shape":[2],"shape":[1],"data_offsets":[0,8]}}'
    with pytest.raises(EttError, match="tensor 'a'.*'shape' twice"):
        read_header(_raw(tmp_path, inner.encode(), data=b"\0" * 8))


def test_header_rules_accept_what_safetensors_writes(tmp_path):
    """Zero-sized tensors, 0-d tensors, and keys in any order: valid files still read."""
    from safetensors.numpy import save_file

    arrays = {"z": np.zeros((0, 3), np.float32), "s": np.array(2.5, np.float64), "b": np.ones(3, np.bool_)}
    save_file(arrays, tmp_path / "ok.safetensors")
    h = read_header(tmp_path / "ok.safetensors")
    for k, v in arrays.items():
        np.testing.assert_array_equal(read_array(h.path, h.tensors[k]), v)
