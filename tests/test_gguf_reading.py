"""The fast GGUF reading used by the base_model and export stages reads exactly what `gguf.GGUFReader` reads, and
leaves the `gguf` package as it found it. (The mirror's real SmolLM2 file goes through it in
test_models.py::test_mirror_gguf_converts_to_a_loadable_hf_folder and the export tests.)"""
from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from hatetune.gguf_reading import fast_gguf_reading  # noqa: E402


def write_sample_gguf(path):
    """A GGUF holding every kind of value the readers parse: scalars, a string, arrays of strings (a vocabulary
    with multi-byte UTF-8), ints and floats, and F32 / F16 / Q8_0 tensors."""
    rng = np.random.default_rng(0)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_uint32("llama.block_count", 2)
    writer.add_float32("llama.rope.freq_base", 100000.0)
    writer.add_bool("tokenizer.ggml.add_bos_token", False)
    writer.add_string("general.name", "sample – with UTF-8 ü")
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}ü" for i in range(3000)])
    writer.add_array("tokenizer.ggml.token_type", [i % 3 for i in range(3000)])
    writer.add_array("tokenizer.ggml.scores", [float(i) / 7 for i in range(3000)])
    weight = rng.standard_normal((64, 96)).astype(np.float32)
    writer.add_tensor("blk.0.attn_norm.weight", rng.standard_normal(96).astype(np.float32))
    writer.add_tensor("blk.0.ffn_up.weight", weight.astype(np.float16))
    writer.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(weight, gguf.GGMLQuantizationType.Q8_0),
                      raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_fast_reader_reads_the_same_fields_and_tensors(tmp_path):
    path = write_sample_gguf(tmp_path / "sample.gguf")
    expected = gguf.GGUFReader(str(path))
    with fast_gguf_reading():
        got = gguf.GGUFReader(str(path))
        assert gguf.GGUFReader(str(path)) is got  # one reader per file within a block
    assert list(got.fields) == list(expected.fields)
    for name, field in expected.fields.items():
        mine = got.fields[name]
        assert (mine.offset, mine.types, mine.data) == (field.offset, field.types, field.data), name
        assert [bytes(p) for p in mine.parts] == [bytes(p) for p in field.parts], name
        if name.startswith(("tokenizer.", "general.", "llama.")):
            assert mine.contents() == field.contents(), name
    assert got.fields["tokenizer.ggml.tokens"].contents()[2999] == "tok2999ü"
    assert len(got.tensors) == len(expected.tensors) == 3
    for mine, tensor in zip(got.tensors, expected.tensors):
        assert (mine.name, mine.tensor_type, mine.shape.tolist(), mine.data_offset) == \
               (tensor.name, tensor.tensor_type, tensor.shape.tolist(), tensor.data_offset)
        assert np.array_equal(np.asarray(mine.data), np.asarray(tensor.data))
    q8 = got.tensors[2]
    dequantized = gguf.quants.dequantize(q8.data, q8.tensor_type)
    assert np.abs(dequantized - gguf.quants.dequantize(expected.tensors[2].data, q8.tensor_type)).max() == 0


def test_the_gguf_package_is_restored_after_the_block_even_on_error(tmp_path):
    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    with pytest.raises(RuntimeError):
        with fast_gguf_reading():
            assert gguf.GGUFReader is not reader and gguf.get_tensor_name_map is not name_map
            # the memoised name map is the package's own, built once
            first = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
            assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is first
            assert first.get_name("model.layers.1.self_attn.q_proj") == \
                   name_map(gguf.MODEL_ARCH.LLAMA, 2).get_name("model.layers.1.self_attn.q_proj") == "blk.1.attn_q"
            raise RuntimeError("a failed load")
    assert gguf.GGUFReader is reader and gguf.get_tensor_name_map is name_map
