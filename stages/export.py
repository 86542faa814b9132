"""export: the fine-tuned model as one GGUF file for Ollama and llama.cpp, with an Ollama Modelfile, verified.

1. Merges the adapter of models/adapter/<task>/ into an unquantized float32 copy of models/base/<model>/ (never
   into 4-bit weights). An adapter that trains lm_head over tied embeddings is merged with the head untied: it
   could not be a GGUF LoRA or a vLLM LoRA module.
2. Writes models/export/<task>/model.gguf (export.qtype: Q8_0 by default, F16, or F32) with the `gguf` package,
   the tokenizer and metadata carried over from the mirror's source GGUF, and models/export/<task>/Modelfile whose
   TEMPLATE renders exactly the training prompt (`ollama create hatetune-<task> -f .../Modelfile`). A base without
   a source GGUF (Hub or local folder) gets models/export/<task>/merged/ instead: the merged Hugging Face folder
   for llama.cpp's convert_hf_to_gguf.py (see the README).
3. Verifies: loads the GGUF back with transformers and labels the test split (export.verify_rows rows; null: all)
   with the evaluate stage's prompt and decoding, and writes metrics/export.json: label agreement with the merged
   model (target >= 0.99; below export.min_agreement the stage fails) and with metrics/eval's predictions.
"""
from __future__ import annotations

import json
import sys

from hatetune import carbon, config, evaluation, inference, labeling, metrics, model_sources, models, paths, prompts
from hatetune import sources
from hatetune.errors import HatetuneError, exit_on_error
from hatetune.export import gguf_file, merge, modelfile
from hatetune.io import atomic_path, read_jsonl, write_json

TARGET_AGREEMENT = 0.99


def evaluate_predictions(ids: list) -> list | None:
    """The evaluate stage's test-split labels for `ids` (None when it did not evaluate these rows)."""
    path = paths.predictions_file(paths.EVAL, "test")
    if not path.is_file():
        return None
    predicted = {r["id"]: r["predicted"] for r in read_jsonl(path)}
    return [predicted[i] for i in ids] if all(i in predicted for i in ids) else None


def label_summary(predicted, gold, labels) -> dict:
    found = metrics.classification_metrics(gold, predicted, labels)
    return {"accuracy": found["accuracy"], "macro_f1": found["macro_f1"], "invalid_rate": found["invalid_rate"]}


@exit_on_error
def main(argv=None) -> int:
    cfg = config.stage_config(__doc__, "export", argv)
    task, ex, labels = cfg.task.name, cfg.export, labeling.labels_of(cfg)
    adapter, out = paths.adapter_dir(task), paths.export_dir(task)
    source = json.loads(paths.base_source_file(cfg.model.name).read_text(encoding="utf-8"))
    rows, gold = evaluation.load_rows(paths.split_file(task, "test"), labels)
    rows, gold = (rows[:ex.verify_rows], gold[:ex.verify_rows]) if ex.verify_rows else (rows, gold)
    ids = [r.get("id", str(i + 1)) for i, r in enumerate(rows)]

    with carbon.track_emissions("export", cfg.carbon.country_iso_code, paths.carbon_file("export")):
        tokenizer = models.load_tokenizer(adapter, cfg.model, padding_side="left")
        model = merge.merge_adapter(cfg.model, paths.base_model_dir(cfg.model.name), adapter)
        head = merge.trains_output_head(adapter)
        if head:
            print("export: the adapter trains lm_head over the base's output head: merged (a LoRA on lm_head "
                  "cannot be a GGUF LoRA, and vLLM rejects it as a LoRA module)", file=sys.stderr)
        merged_labels = labeling.classify_rows(model, tokenizer, rows, cfg, agreement=False, progress=True,
                                               desc="merged model")["predicted"]
        stops = modelfile.stop_tokens(tokenizer, inference.eos_token_ids(model, tokenizer))
        text = modelfile.modelfile_text(modelfile.ollama_template(cfg.task.prompt, tokenizer), stops,
                                        cfg.eval.max_new_tokens, paths.GGUF_FILE)
        gguf_info, gguf_labels = None, None
        with atomic_path(out) as tmp:
            tmp.mkdir(parents=True)
            (tmp / paths.MODELFILE).write_text(text, encoding="utf-8")
            if source["kind"] == "gguf":
                src = model_sources.source_gguf(source, sources.mirror_root(cfg.download.mirror))
                overrides = gguf_file.header_overrides(tokenizer, prompts.adds_special_tokens(cfg.task.prompt))
                gguf_info = gguf_file.write_gguf(model, src, tmp / paths.GGUF_FILE, ex.qtype, overrides)
                del model
                gguf_model, gguf_tokenizer = gguf_file.load_gguf(tmp / paths.GGUF_FILE)
                gguf_labels = labeling.classify_rows(gguf_model, gguf_tokenizer, rows, cfg, agreement=False,
                                                     progress=True, desc="GGUF")["predicted"]
            else:
                print(f"export: the base ({model_sources.describe(source)}) has no source GGUF: writing the "
                      f"merged model to {out / paths.MERGED_DIR} for llama.cpp's convert_hf_to_gguf.py",
                      file=sys.stderr)
                merge.save_merged(model, tokenizer, tmp / paths.MERGED_DIR)
            result = verification(gguf_info, gguf_labels, merged_labels, gold, ids, labels, head)
            if gguf_labels is not None and result["agreement_gguf_merged"] < ex.min_agreement:
                raise HatetuneError(f"the GGUF's labels agree with the merged model's on only "
                                    f"{result['agreement_gguf_merged']:.2%} of {len(rows)} test rows (below "
                                    f"export.min_agreement {ex.min_agreement}): the export is broken")
    write_json(paths.EXPORT_METRICS, result)
    for key in ("agreement_gguf_merged", "agreement_gguf_evaluate", "agreement_merged_evaluate"):
        if result[key] is not None:
            print(f"export: {key} = {result[key]:.4f} on {len(rows)} test rows")
    if gguf_labels is not None and result["agreement_gguf_merged"] < TARGET_AGREEMENT:
        print(f"export: warning: GGUF/merged agreement below the {TARGET_AGREEMENT} target", file=sys.stderr)
    print(f"export -> {out}, {paths.EXPORT_METRICS}")
    return 0


def verification(gguf_info, gguf_labels, merged_labels, gold, ids, labels, head: bool) -> dict:
    """metrics/export.json: what was written and how its labels agree (deterministic: no timings)."""
    evaluated = evaluate_predictions(ids)

    def agree(a, b):
        return metrics.agreement(a, b) if a is not None and b is not None else None

    return {"rows": len(gold), "format": "gguf" if gguf_info else "merged_hf",
            "qtype": gguf_info["qtype"] if gguf_info else None,
            "gguf_bytes": gguf_info["bytes"] if gguf_info else None,
            "gguf_sha256": gguf_info["sha256"] if gguf_info else None,
            "tied_embeddings": gguf_info["tied"] if gguf_info else None,
            "adapter_trains_lm_head": head,
            "agreement_target": TARGET_AGREEMENT,
            "agreement_gguf_merged": agree(gguf_labels, merged_labels),
            "agreement_gguf_evaluate": agree(gguf_labels, evaluated),
            "agreement_merged_evaluate": agree(merged_labels, evaluated),
            "merged": label_summary(merged_labels, gold, labels),
            "gguf": label_summary(gguf_labels, gold, labels) if gguf_labels is not None else None}


if __name__ == "__main__":
    sys.exit(main())
