"""The seed presets compose (as `dvc exp run -S +experiment=<name>` does) to exactly the published recipes
(../shared/docs/seed-systems.md), and `lora.r` overrides work on any configuration."""
from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from hatetune import config

from support import ROOT

ALL_LINEAR_7 = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FULL_DATA = {"train": None, "dev": None, "test": None}

# Every training-side value of each seed, flattened to dotted keys.
PRESETS = {
    "dynahate_llama31_8b": {  # seed B
        "task.name": "dynahate",
        "task.prompt.format": "chat",
        "model.name": "llama31_8b_instruct",
        "model.hub_id": "meta-llama/Llama-3.1-8B-Instruct",
        "model.quantization.load_in_4bit": True,
        "lora.r": 8, "lora.alpha": 16, "lora.dropout": 0.05, "lora.bias": "none",
        "lora.target_modules": "all-linear",
        "train.cutoff_len": 1024, "train.batch_size": 3, "train.grad_accum": 8, "train.lr": 2e-5,
        "train.scheduler": "cosine", "train.warmup_ratio": 0.1, "train.warmup_steps": 0, "train.epochs": 3.0,
        "train.max_steps": None, "train.optimizer": "paged_adamw_32bit", "train.precision": "bf16",
        "train.gradient_checkpointing": True, "train.group_by_length": False, "train.max_grad_norm": 1.0,
        "train.weight_decay": 0.0, "train.loss_on": "completion",
        "model.chat_template": "llama3_llamafactory",
        "eval.max_new_tokens": 4, "eval.batch_size": 8,
        "data.max_examples": FULL_DATA,
    },
    "mhs_mistral7b": {  # seed C
        "task.name": "mhs",
        "task.prompt.format": "raw",
        "task.prompt.template": "[INST] ### Instruction: {instruction} \n### Text: {input} \n### Answer: [/INST] ",
        "model.name": "mistral7b_instruct_v02",
        "model.hub_id": "mistralai/Mistral-7B-Instruct-v0.2",
        "model.quantization.load_in_4bit": True,
        "lora.r": 16, "lora.alpha": 16, "lora.dropout": 0.0, "lora.bias": "none",
        "lora.target_modules": ALL_LINEAR_7,
        "train.cutoff_len": 512, "train.batch_size": 64, "train.grad_accum": 1, "train.epochs": 1.0,
        "train.max_steps": None, "train.lr": 1e-4, "train.weight_decay": 0.01, "train.optimizer": "adamw_8bit",
        "train.scheduler": "linear", "train.warmup_ratio": 0.0, "train.warmup_steps": 0,
        "train.max_grad_norm": 1.0, "train.gradient_checkpointing": True, "train.group_by_length": False,
        "train.loss_on": "all", "seed": 182736827,
        "task.prompt.completion": "{output} {eos}", "model.chat_template": None,
        "eval.max_new_tokens": 20, "eval.batch_size": 64,
        "data.max_examples": FULL_DATA,
    },
    "stophate_llama2_13b": {  # seed A
        "model.name": "llama2_13b_chat",
        "model.hub_id": "meta-llama/Llama-2-13b-chat-hf",
        "model.quantization.load_in_4bit": True, "model.quantization.quant_type": "nf4",
        "model.quantization.double_quant": True, "model.quantization.compute_dtype": "bfloat16",
        "model.quantization.quant_storage": "uint8",
        "lora.r": 32, "lora.alpha": 64, "lora.dropout": 0.05, "lora.bias": "lora_only",
        "lora.target_modules": ALL_LINEAR_7 + ["lm_head"],
        "train.cutoff_len": 512, "train.batch_size": 16, "train.grad_accum": 1, "train.warmup_steps": 5,
        "train.warmup_ratio": 0.0, "train.max_steps": 1000, "train.lr": 2.5e-5, "train.precision": "fp16",
        "train.optimizer": "paged_adamw_8bit", "train.scheduler": "linear", "train.weight_decay": 0.0,
        "train.max_grad_norm": 1.0, "train.gradient_checkpointing": False, "train.group_by_length": False,
        "model.chat_template": "llama2_decoding_hate",
        "data.max_examples": FULL_DATA,
        # the task side: MetaHate, the stop message for every post, the paper's decoding on every test post
        "task.name": "stophate", "task.kind": "generation", "task.prompt.format": "chat",
        "task.prompt.instruction": "Tell me what is your answer of the following message?\nMessage:",
        "task.prompt.system": "", "task.max_examples": None,
        "task.targets.mode": "stop_all", "task.stop_message": "I cannot engage with this conversation.",
        "task.targets.train_sources": ["metahate"], "task.extra_sources.metahate.repo_id": "irlab-udc/metahate",
        "task.extra_sources.metahate.kind": "hub",
        "eval.generation.temperature": 0.8, "eval.generation.top_p": 0.95, "eval.generation.max_new_tokens": 280,
        "eval.generation.max_prompts": None, "eval.generation.decodings": ["sampled", "greedy"],
        "eval.generation.sets": ["conan", "dynahate_hate", "dynahate_not_hate"],
    },
}


def value(cfg, dotted):
    node = OmegaConf.select(cfg, dotted, throw_on_missing=True)
    return OmegaConf.to_container(node) if OmegaConf.is_config(node) else node


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_composes_to_the_published_recipe(preset):
    cfg = config.validate(config.compose([f"+experiment={preset}"]))
    for key, expected in PRESETS[preset].items():
        got = value(cfg, key)
        assert got == (pytest.approx(expected) if isinstance(expected, float) else expected), key
    assert config.lora_alpha(cfg) == PRESETS[preset]["lora.alpha"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_pins_a_hub_revision(preset):
    cfg = config.compose([f"+experiment={preset}"])
    assert len(cfg.model.revision) == 40 and int(cfg.model.revision, 16) >= 0  # a commit sha, not a branch
    assert cfg.model.trust_remote_code is False


@pytest.mark.parametrize("task", sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml")))
def test_every_default_data_source_is_pinned(task):
    """The CPU defaults download nothing that can change under them: a commit in every URL (and its sha256 where
    it is known offline; DynaHate's v0.2.3 file is not in the mirror), or a Hub commit. (The paper's full MetaHate
    is gated and its commit unknown offline: its preset says so.)"""
    cfg = config.compose([f"task={task}"])
    found = {"task.source": cfg.task.source, **{f"task.extra_sources.{k}": v for k, v in cfg.task.extra_sources.items()}}
    for field, source in found.items():
        if source.kind == "https":
            assert re.search(r"/[0-9a-f]{40}/", source.url), field
            assert source.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", source.sha256), field
        elif source.kind == "hub":
            assert re.fullmatch(r"[0-9a-f]{40}", source.revision or ""), field


@pytest.mark.parametrize("overrides, alpha", [([], 64), (["+experiment=dynahate_llama31_8b"], 16),
                                              (["+experiment=mhs_mistral7b"], 16),
                                              (["+experiment=stophate_llama2_13b"], 64)])
def test_lora_r_override_works_everywhere(overrides, alpha):
    cfg = config.validate(config.compose([*overrides, "lora.r=32"]))
    assert cfg.lora.r == 32
    assert config.lora_alpha(cfg) == alpha  # presets pin alpha; the default's null means 2 x r


def test_default_is_the_cpu_recipe():
    cfg = config.validate(config.compose())
    assert cfg.model.name == "smollm2_135m_instruct" and cfg.task.name == "dynahate"
    assert (cfg.model.quantization.load_in_4bit, cfg.model.quantization.quant_type,
            cfg.model.quantization.double_quant) == (True, "nf4", True)
    assert (cfg.lora.r, config.lora_alpha(cfg), cfg.lora.dropout, cfg.lora.target_modules) == \
        (8, 16, 0.0, "all-linear")
    # the recipe BENCHMARKS.md chose: 512 rows x 3 epochs, packed, dev-calibrated score mode
    assert (cfg.data.max_examples.train, cfg.train.epochs, cfg.train.lr, cfg.train.packing) == \
        (512, 3.0, 3e-3, "shared_prefix")
    assert (cfg.eval.mode, cfg.eval.calibration.method) == ("score", "threshold")
    assert all(n is not None for n in cfg.data.max_examples.values())  # subsampled for a CPU


@pytest.mark.parametrize("override, key", [("train.warmup_ratio=1.5", "train.warmup_ratio"),
                                           ("train.warmup_steps=-1", "train.warmup_steps"),
                                           ("train.optimizer=adam", "train.optimizer"),
                                           ("lora.target_modules=everything", "lora.target_modules"),
                                           ("model.quantization.quant_type=int3", "model.quantization.quant_type"),
                                           ("train.eval_examples=0", "train.eval_examples")])
def test_bad_training_values_name_the_key(override, key):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        config.validate(config.compose([override]))


def test_warmup_steps_and_ratio_are_exclusive():
    with pytest.raises(config.ConfigError, match="train.warmup_steps"):
        config.validate(config.compose(["train.warmup_steps=5"]))  # the default already sets a ratio
    cfg = config.validate(config.compose(["train.warmup_steps=5", "train.warmup_ratio=0"]))
    assert cfg.train.warmup_steps == 5


def test_stophate_preset_carries_its_published_carbon_accounting(monkeypatch):
    """Seed A: 9 h x 300 W (RTX A6000) x PUE 1 x 0.432 kg/kWh = 1.17 kg CO2eq, straight from the preset."""
    from hatetune.carbon import estimate_from_config

    monkeypatch.chdir(ROOT)
    cfg = config.validate(config.compose(["+experiment=stophate_llama2_13b"]))
    assert round(estimate_from_config(cfg.carbon)["emissions_kg"], 2) == 1.17


def test_stophate_preset_composes_the_same_with_or_without_task_stophate():
    """`dvc exp run -S task=stophate -S +experiment=stophate_llama2_13b` is the paper's recipe too."""
    alone = config.validate(config.compose(["+experiment=stophate_llama2_13b"]))
    both = config.validate(config.compose(["task=stophate", "+experiment=stophate_llama2_13b"]))
    assert OmegaConf.to_container(alone) == OmegaConf.to_container(both)


def test_task_stophate_is_the_cpu_recipe():
    cfg = config.validate(config.compose(["task=stophate"]))
    assert cfg.model.name == "smollm2_135m_instruct" and cfg.task.targets.mode == "stop_when_hateful"
    assert all(n is not None for k, n in cfg.task.max_examples.items() if k != "test")
    assert cfg.eval.generation.max_prompts is not None and cfg.eval.generation.max_new_tokens < 280


@pytest.mark.parametrize("override, key", [("task.targets.mode=refuse", "task.targets.mode"),
                                           ("eval.generation.top_p=1.5", "eval.generation.top_p"),
                                           ("eval.generation.temperature=0", "eval.generation.temperature"),
                                           ("eval.generation.sets=[reddit]", "eval.generation.sets"),
                                           ("eval.generation.decodings=[beam]", "eval.generation.decodings"),
                                           ("task.targets.train_sources=[twitter]", "task.targets.train_sources"),
                                           ("task.stop_message=' '", "task.stop_message"),
                                           ("task.parser=dynahate_regex", "task.parser"),
                                           ("task.max_examples.train=0", "task.max_examples.train"),
                                           ("+task.extra_sources.reddit={name: r, kind: local, path: x}",
                                            "task.extra_sources")])
def test_bad_stophate_values_name_the_key(override, key):
    with pytest.raises(config.ConfigError, match=key.replace(".", r"\.")):
        config.validate(config.compose(["task=stophate", override]))


def test_classification_tasks_cannot_use_the_stop_parser():
    with pytest.raises(config.ConfigError, match="task.parser"):
        config.validate(config.compose(["task.parser=stop_message"]))
