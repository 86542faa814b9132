"""`dvc repro export` for real: a tiny random Llama with SmolLM2's vocabulary, put in a temporary offline mirror as
a GGUF file in place of SmolLM2's, goes the whole way (sources, base_model's GGUF conversion, train, evaluate)
and is exported: a GGUF that transformers loads back and that labels the test split like the merged model, an
Ollama Modelfile, and metrics/export.json. Skips without the real mirror (the tokenizer metadata comes from it)."""
from __future__ import annotations

import json

import pytest

from integration.conftest import make_tiny_project, ran_stages, run  # tests/ is on sys.path
from support import mirror_dir

MIRROR = mirror_dir()
SMOL = MIRROR / "smollm2-135m-instruct" if MIRROR else None


@pytest.mark.skipif(SMOL is None or not SMOL.is_dir(), reason="no offline mirror")
def test_dvc_repro_export_writes_a_verified_gguf_and_a_modelfile(project_repo, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    from hatetune.export import gguf_file
    from test_export import build_smol_vocab_model

    base = build_smol_vocab_model(tmp_path / "tiny-smol")
    gguf_file.write_gguf(AutoModelForCausalLM.from_pretrained(str(base)), SMOL / "SmolLM2-135M-Instruct.Q4_1.gguf",
                         tmp_path / "mirror" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf", "F32")
    repo, env = make_tiny_project(project_repo, tmp_path, None,
                                  train={"max_steps": 2, "batch_size": 4, "save_steps": 2, "logging_steps": 1,
                                         "eval_examples": 4},
                                  max_examples={"train": 16, "dev": 4, "test": 8}, eval={"batch_size": 4})
    first = run(["dvc", "repro", "export"], repo, env=env)
    assert set(ran_stages(first.stdout)) == {"sources", "download", "labels", "convert", "base_model", "replies",
                                             "train", "functional_suite", "evaluate", "export"}, first.stdout

    result = json.loads((repo / "metrics/export.json").read_text())
    assert (result["format"], result["qtype"], result["rows"], result["tied"]) == ("gguf", "Q8_0", 8, True)
    assert result["agreement_exported_merged"] >= 0.9 and result["agreement_exported_evaluate"] is not None
    assert result["adapter_trains_lm_head"] is False
    out = repo / "models/export/dynahate"
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "model.gguf"]
    fields = gguf.GGUFReader(str(out / "model.gguf")).fields
    assert fields["llama.block_count"].contents() == 2
    assert fields["tokenizer.ggml.add_bos_token"].contents() is False  # the chat template writes the prompt start
    assert "SmolLM" in fields["tokenizer.chat_template"].contents()
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.gguf\n") and "Post:\n{{ .Prompt }}<|im_end|>" in modelfile
    assert json.loads((repo / "metrics/carbon/export.json").read_text())

    assert ran_stages(run(["dvc", "repro", "export"], repo, env=env).stdout) == ["sources"]
