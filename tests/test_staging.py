"""The recorder's host staging and the block serializer: exact tensors, by name, in valid files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tlora_analysis.fileio import TensorBlock, load_tensors, safetensors_bytes, save_tensors, tensor_checksum
from tlora_analysis.recording.staging import HostBufferPool, _chunks, copy_to_host


def _tensors(device: str = "cpu") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {
        "a.B": torch.randn(4, 4, generator=g),
        "a.alpha": torch.tensor(0.5),
        "b.B": torch.randn(4, 4, generator=g).T,  # not contiguous
        "b.alpha": torch.tensor(-2.0),
        "c.half": torch.randn(2, 3, generator=g).to(torch.bfloat16),
        "c.long": torch.arange(5),
        "d.empty": torch.zeros(0, 3),
        "e.mask": torch.rand(7, generator=g) > 0.5,
    }
    return {k: v.to(device) for k, v in out.items()}


def _written(copy, path) -> dict[str, torch.Tensor]:
    try:
        save_tensors(path, copy.blocks(), {"step": 3})
    finally:
        copy.release()
    tensors, meta = load_tensors(path)  # verifies the checksum
    assert meta["step"] == "3"
    return tensors


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(want)
    for name, t in want.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
        torch.testing.assert_close(got[name], t.detach().cpu(), rtol=0, atol=0)


@pytest.mark.parametrize("gather_bytes", [1, 40, 2**20])
def test_staged_snapshots_round_trip_exactly_for_any_grouping(tmp_path, gather_bytes):
    want = _tensors()
    _assert_same(_written(copy_to_host(want, HostBufferPool(), gather_bytes=gather_bytes), tmp_path / "s"), want)


def test_block_files_are_safetensors_with_the_dict_checksum(tmp_path):
    want = _tensors()
    path = tmp_path / "x.safetensors"
    path.write_bytes(safetensors_bytes([TensorBlock.of(k, v) for k, v in want.items()], {"note": "hi"}))
    _assert_same(load_file(path), want)  # the safetensors library's own reader and validation
    blocks = copy_to_host(want, HostBufferPool()).blocks()
    header_len = int.from_bytes(safetensors_bytes(blocks, {})[:8], "little")
    assert header_len % 8 == 0
    _, meta = load_tensors(path)
    assert meta["sha256"] == tensor_checksum(want)


def test_hand_made_block_layout():
    # two float32 scalars then a bfloat16 pair: offsets by hand (F32 first: wider dtypes lead)
    blocks = [TensorBlock(["h"], [torch.Size([2])], torch.tensor([1.0, 2.0], dtype=torch.bfloat16)),
              TensorBlock(["f", "g"], [torch.Size([]), torch.Size([])], torch.tensor([3.0, 4.0]))]
    data = safetensors_bytes(blocks, {})
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    assert header["f"]["data_offsets"] == [0, 4] and header["g"]["data_offsets"] == [4, 8]
    assert header["h"] == {"dtype": "BF16", "shape": [2], "data_offsets": [8, 12]}
    assert len(data) == 8 + n + 12


def test_bad_blocks_are_named():
    with pytest.raises(ValueError, match="appears twice"):
        safetensors_bytes([TensorBlock.of("a", torch.ones(1)), TensorBlock.of("a", torch.ones(1))], {})
    with pytest.raises(ValueError, match="holds 3 elements"):
        safetensors_bytes([TensorBlock(["a"], [torch.Size([2])], torch.ones(3))], {})
    with pytest.raises(TypeError, match="cannot store dtype torch.complex64"):
        safetensors_bytes([TensorBlock.of("a", torch.ones(1, dtype=torch.complex64))], {})


def test_the_copy_holds_the_values_at_the_call(tmp_path):
    src = _tensors()
    copy = copy_to_host(src, HostBufferPool())
    before = {k: v.clone() for k, v in src.items()}
    for t in src.values():
        t.add_(1) if t.dtype != torch.bool else t.logical_not_()
    _assert_same(_written(copy, tmp_path / "s"), before)


def test_buffers_are_reused_between_snapshots(tmp_path):
    pool = HostBufferPool()
    first = copy_to_host(_tensors(), pool)
    ptrs = sorted(p.buffer.data_ptr() for p in first.pieces)
    _written(first, tmp_path / "a")
    second = copy_to_host(_tensors(), pool)
    assert sorted(p.buffer.data_ptr() for p in second.pieces) == ptrs
    _assert_same(_written(second, tmp_path / "b"), _tensors())


def test_same_shapes_share_one_gather():
    copy = copy_to_host(_tensors(), HostBufferPool())
    assert sorted(p.names for p in copy.pieces if len(p.names) > 1) == [["a.B", "b.B"], ["a.alpha", "b.alpha"]]


def test_pool_keeps_a_bounded_number_of_free_buffers():
    pool = HostBufferPool(keep=2)
    bufs = [pool.take(8, torch.float32, pinned=False) for _ in range(5)]
    for b in bufs:
        pool.give(b)
    assert len(pool._free[(8, torch.float32, False)]) == 2


def test_chunks_by_hand():
    t = {n: torch.zeros(n) for n in (1, 2, 3, 10)}  # 4, 8, 12, 40 bytes
    groups = _chunks([(str(n), v) for n, v in t.items()], cap=16)
    assert [[name for name, _ in g] for g in groups] == [["1", "2"], ["3"], ["10"]]
    assert _chunks([], cap=16) == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_copy_is_pinned_exact_and_ordered_before_later_writes(tmp_path):
    src = {k: v for k, v in _tensors("cuda").items() if v.dtype.is_floating_point and v.numel()}
    copy = copy_to_host(src, HostBufferPool())
    assert all(p.buffer.is_pinned() for p in copy.pieces) and len(copy.events) == 1
    before = {k: v.clone() for k, v in src.items()}
    for t in src.values():
        t.mul_(3).add_(1)  # queued after the copy on the same stream
    _assert_same(_written(copy, tmp_path / "s"), before)
