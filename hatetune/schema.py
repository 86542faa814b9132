"""The typed config schema and its validation: every bad value fails with one error naming the key.

Types and unknown keys are checked by OmegaConf against the dataclasses below; `_check_rules` checks what a type
cannot express (ranges, choices, combinations).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

# Only what is implemented end to end: a task or parser that evaluate cannot handle fails here, not after training.
TASKS = ("dynahate", "mhs", "stophate")
PARSERS = ("dynahate_regex", "mhs_substring", "stop_message")
SERVE_BACKENDS = ("transformers", "ollama", "openai")
EXPORT_QTYPES = ("Q8_0", "F16", "F32")
SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# classification: the answer is a label (parsed or scored); generation: the answer is a chat reply, judged for
# stopping and for hate (Stop-Hate).
TASK_KINDS = ("classification", "generation")
TARGET_MODES = ("stop_when_hateful", "stop_all", "counter_speech")
EVAL_SETS = ("conan", "dynahate_hate", "dynahate_not_hate")
# the keys task.extra_sources may have: one reader each in hatetune.corpora.READERS (a test keeps them equal)
CORPUS_READERS = ("metahate", "conan", "multitarget_conan", "dialoconan", "kn_conan")
DECODINGS = ("sampled", "greedy")


# ----------------------------------------------------------------------------------------------- schema
@dataclass
class SourceConf:
    name: str = MISSING  # folder name under the offline mirror
    kind: str = MISSING  # https | hub | local
    url: Optional[str] = None
    sha256: Optional[str] = None
    filename: Optional[str] = None
    repo_id: Optional[str] = None
    revision: Optional[str] = None
    hub_split: Optional[str] = None
    path: Optional[str] = None


@dataclass
class BinningConf:
    score_column: str = "hate_speech_score"
    supportive_below: float = -1.0
    hate_above: float = 0.5


@dataclass
class LabelsConf:
    names: List[str] = MISSING
    map: Optional[Dict[str, str]] = None
    binning: Optional[BinningConf] = None


@dataclass
class SplitConf:
    strategy: str = "auto"  # upstream | auto | grouped | legacy_row_split
    fractions: Dict[str, float] = field(default_factory=lambda: {"train": 0.8, "dev": 0.1, "test": 0.1})
    legacy_rows: Optional[int] = None
    legacy_test_size: Optional[float] = None


@dataclass
class PromptConf:
    format: str = "chat"  # chat | raw
    instruction: str = MISSING
    system: str = ""
    template: Optional[str] = None
    completion: str = "{output}{eos}"  # raw format: what follows the prompt ({output}, {eos})


@dataclass
class ColumnsConf:
    """Which upstream columns hold what. null: the dataset has no such column."""
    id: str = "id"
    text: str = "text"
    label: Optional[str] = None  # raw label (tasks with labels.map); binned tasks use labels.binning.score_column
    split: Optional[str] = None  # upstream train/dev/test column
    linked_id: Optional[str] = None  # another row's id that must land in the same split (DynaHate's pairs)
    annotator: Optional[str] = None  # one row per (id, annotator): rows are aggregated to one per id


@dataclass
class BreakdownConf:
    """One breakdown of the results by group (hatetune.breakdowns): an upstream column whose values are the groups
    (split on `separator` when one cell names several), or boolean `flags` columns, each a group of its own."""
    column: Optional[str] = None
    separator: Optional[str] = None
    flags: Optional[List[str]] = None


@dataclass
class BreakdownsConf:
    """Per-group results on the task's own splits: the columns are kept through labels -> convert -> predictions
    as extra keys of each row (never in the prompt)."""
    columns: Dict[str, BreakdownConf] = field(default_factory=dict)
    gap: Optional[str] = None  # the breakdown whose largest accuracy gap between groups is a metric
    not_groups: List[str] = field(default_factory=list)  # values meaning "no group": shown, left out of the gap


@dataclass
class TargetsConf:
    """What a generation task teaches the model to answer (Stop-Hate)."""
    mode: str = "stop_when_hateful"  # stop_when_hateful | stop_all (seed A) | counter_speech
    dialogues: bool = False  # DIALOCONAN: earlier turns of the dialogue as chat history
    train_sources: Optional[List[str]] = None  # sources whose train rows are trained on (null: all)
    distill_max_new_tokens: int = 48  # self-distilled normal replies: at most this many new tokens (greedy)


@dataclass
class TaskConf:
    name: str = MISSING
    source: SourceConf = MISSING
    columns: ColumnsConf = field(default_factory=ColumnsConf)
    labels: LabelsConf = MISSING
    split: SplitConf = field(default_factory=SplitConf)
    prompt: PromptConf = MISSING
    parser: str = MISSING
    breakdowns: BreakdownsConf = field(default_factory=BreakdownsConf)
    # Functional test suites (eval.functional): the task label each HateCheck label stands for; a prediction
    # counts as hateful when it is the label `hateful` maps to, as non-hateful otherwise. null: no suite.
    functional_labels: Optional[Dict[str, str]] = None
    kind: str = "classification"  # classification | generation
    # more corpora, read by the reader of the same name (hatetune.corpora): generation tasks only
    extra_sources: Dict[str, SourceConf] = field(default_factory=dict)
    max_examples: Optional[Dict[str, Optional[int]]] = None  # this task's subsample per split (null: data.max_examples)
    targets: Optional[TargetsConf] = None  # generation tasks
    # generation tasks: what the model answers hateful posts with, and what counts as a stop in its evaluation
    stop_message: Optional[str] = None
    prompted_systems: Dict[str, str] = field(default_factory=dict)  # name -> system prompt of a prompted base system


@dataclass
class QuantizationConf:
    load_in_4bit: bool = True
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "bfloat16"
    quant_storage: str = "uint8"
    cpu_dequantize_once: bool = True  # on CPU: keep each 4-bit weight dequantised (hatetune.models.dequantize_once)


@dataclass
class ModelConf:
    name: str = MISSING
    hub_id: str = MISSING
    revision: str = "main"
    mirror_name: Optional[str] = None
    gguf_file: Optional[str] = None
    path: Optional[str] = None  # a local Hugging Face folder; wins over the mirror and the Hub
    chat_template: Optional[str] = None  # a template pinned in hatetune.chat_templates; null: the tokenizer's
    trust_remote_code: bool = False
    quantization: QuantizationConf = field(default_factory=QuantizationConf)


@dataclass
class LoraConf:
    r: int = 8
    alpha: Optional[float] = None  # null = 2 x r
    dropout: float = 0.05
    bias: str = "none"
    target_modules: Any = "all-linear"  # "all-linear" or a list of module names


@dataclass
class TrainConf:
    cutoff_len: int = 256
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    scheduler: str = "cosine"
    warmup_ratio: float = 0.0  # share of the total optimizer steps ...
    warmup_steps: int = 0  # ... or an exact number of steps (set one of the two)
    epochs: float = 1.0
    max_steps: Optional[int] = None  # wins over epochs when set
    optimizer: str = "adamw_torch"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    precision: str = "bf16"
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    packing: str = "none"  # none: padded batches; shared_prefix: a batch as one row, its common prefix once
    loss_on: str = "completion"
    logging_steps: int = 5
    save_steps: int = 20
    save_total_limit: int = 2
    eval_steps: Optional[int] = None  # null: evaluate the dev loss at every checkpoint (save_steps)
    eval_examples: Optional[int] = None  # dev rows for the eval loss (null: all)
    resume: bool = True
    nproc: int = 1
    # LoRA initialisation and batch order only (null: the top-level `seed`, which also draws the splits and the
    # subsample); vary it to measure how much a recipe's result depends on training luck on fixed data.
    seed: Optional[int] = None


@dataclass
class BaselineConf:
    """TF-IDF + logistic regression (the `baseline` stage)."""
    ngram_max: int = 2  # word n-grams 1..ngram_max
    min_df: int = 1
    c: float = 1.0  # inverse regularisation strength of the logistic regression


@dataclass
class CalibrationConf:
    """The decision rule of score mode, fitted on the dev split (hatetune.calibration)."""
    method: str = "threshold"  # threshold | none (plain argmax of the label likelihoods)
    positive: Optional[str] = None  # the label the threshold is on; null: the task's first label
    objective: str = "prevalence"  # prevalence | macro_f1 | precision (the lowest threshold reaching target_precision)
    target_precision: float = 0.9
    temperature: bool = True  # fit a temperature on dev so the probabilities are calibrated


# HateCheck's test cases (Röttger et al., ACL 2021) at a pinned commit of github paul-rottger/hatecheck-data.
HATECHECK_URL = ("https://raw.githubusercontent.com/paul-rottger/hatecheck-data/"
                 "d84302298ceeb34f4b0dde2d8a1f4932c2caa612/test_suite_cases.csv")
HATECHECK_SHA256 = "ecf0dc1e93fccc90b6f880e632b19e635c0f0a68b3157915a9e20b6938f121cf"


@dataclass
class FunctionalConf:
    """A functional test suite in HateCheck's schema, scored by every evaluated system (hatetune.functional)."""
    enabled: bool = False  # opt-in: `dvc exp run -S eval.functional.enabled=true`
    source: SourceConf = field(default_factory=lambda: SourceConf(
        name="hatecheck", kind="https", url=HATECHECK_URL, sha256=HATECHECK_SHA256, filename="test_suite_cases.csv"))


@dataclass
class GenerationSuiteConf:
    """A generation task's replies to the functional suite (eval.functional.enabled): a stop rate per functionality."""
    max_per_functionality: Optional[int] = 2  # a seeded sample of each functionality's cases (null: every case)
    decodings: List[str] = field(default_factory=lambda: ["greedy"])


@dataclass
class GenerationEvalConf:
    """How a generation task's replies are produced and counted (the evaluate stages)."""
    sets: List[str] = field(default_factory=lambda: list(EVAL_SETS))
    max_prompts: Optional[int] = 16  # per set, seeded sample of the test split (null: all)
    decodings: List[str] = field(default_factory=lambda: list(DECODINGS))
    temperature: float = 0.8  # sampled decoding (seed A's paper)
    top_p: float = 0.95
    max_new_tokens: int = 48
    examples: int = 2  # example replies per system and set in the report
    functional: GenerationSuiteConf = field(default_factory=GenerationSuiteConf)


@dataclass
class JudgeConf:
    """The hate classifier that judges a generation task's replies: a hatetune classifier adapter, or the TF-IDF
    baseline (trained on the DynaHate train posts) when there is none."""
    adapter_dir: Optional[str] = None  # null: the TF-IDF fallback
    instruction: str = MISSING  # the prompt the adapter was trained with
    system: str = ""
    hate_label: str = "hate"


@dataclass
class EvalConf:
    mode: str = "greedy"  # greedy | score
    score_method: str = "full"  # full: log-likelihood of every label token + EOS; first_token: the shortcut
    max_new_tokens: int = 4
    batch_size: int = 16
    splits: List[str] = field(default_factory=lambda: ["dev", "test"])
    unquantized_base: bool = False
    adapter: bool = True  # false: the base model alone (the evaluate_zeroshot stage)
    adapter_dir: Optional[str] = None  # null: the train stage's models/adapter/<task>
    data: Optional[str] = None  # an Alpaca JSONL to evaluate instead of eval.splits (by hand)
    output: Optional[str] = None  # null: metrics/eval, metrics/zeroshot, or metrics/external/<data stem>
    prefix_cache: bool = True
    agreement: bool = True  # also compute the other mode's labels: greedy/score agreement
    baseline: BaselineConf = field(default_factory=BaselineConf)
    calibration: CalibrationConf = field(default_factory=CalibrationConf)
    functional: FunctionalConf = field(default_factory=FunctionalConf)
    min_group_size: int = 10  # smaller groups are shown flagged and left out of the gap between groups
    generation: GenerationEvalConf = field(default_factory=GenerationEvalConf)
    judge: JudgeConf = field(default_factory=JudgeConf)


@dataclass
class CarbonConf:
    country_iso_code: str = "USA"
    device: str = "laptop CPU"
    device_power_w: float = 15.0
    pue: float = 1.0
    carbon_intensity_kg_per_kwh: float = 0.432
    hours: Optional[float] = None


@dataclass
class DownloadConf:
    mirror: Optional[str] = None
    retries: int = 3
    timeout_s: float = 60.0


@dataclass
class DataConf:
    max_examples: Dict[str, Optional[int]] = field(default_factory=dict)


@dataclass
class ServeConf:
    """The inference service (`python -m hatetune.serve`; not a DVC stage)."""
    host: str = "127.0.0.1"
    port: int = 5000
    backend: str = "transformers"  # transformers | ollama | openai
    adapter: Optional[str] = "trained"  # trained: the train stage's adapter; null: the base model alone; or a folder
    calibration: Optional[str] = None  # score mode's decision rule; null: the evaluate stage's for the served model
    url: Optional[str] = None  # ollama / openai server; null: the backend's usual local address
    remote_model: Optional[str] = None  # the model's name on that server; null: hatetune-<task>
    remote_api_key_env: Optional[str] = None  # environment variable holding the remote server's API key
    remote_timeout_s: float = 60.0
    threads: int = 8  # waitress worker threads (HTTP); the model runs in one batching thread
    max_batch_size: int = 16
    max_wait_ms: float = 10.0
    max_queue: int = 256  # texts waiting for the model; more -> 503 + Retry-After
    request_timeout_s: float = 60.0
    max_body_bytes: int = 1048576
    max_texts: int = 64
    max_text_chars: int = 10000
    api_key_env: Optional[str] = "HATETUNE_API_KEY"  # when this variable is set, requests need its value
    log_db: Optional[str] = None  # null: logs/requests.sqlite
    log_text: str = "hash"  # text | hash | none
    retention_days: Optional[int] = 30  # null: keep every row


@dataclass
class ExportConf:
    """The export stage: merged model -> GGUF + Ollama Modelfile, verified."""
    qtype: str = "Q8_0"  # Q8_0 | F16 | F32
    verify_rows: Optional[int] = None  # test rows scored to verify the GGUF (null: all)
    min_agreement: float = 0.9  # fail below this GGUF/merged-model label agreement (a broken export)
    tie_margin: float = 0.25  # rows the merged model decides by more than this must agree >= 0.99, else fail


@dataclass
class PrivacyConf:
    owner_only: bool = True  # data/, models/, the DVC cache and every file a stage writes: owner-only


@dataclass
class Config:
    seed: int = 42
    download: DownloadConf = field(default_factory=DownloadConf)
    data: DataConf = field(default_factory=DataConf)
    task: TaskConf = MISSING
    model: ModelConf = MISSING
    lora: LoraConf = field(default_factory=LoraConf)
    train: TrainConf = field(default_factory=TrainConf)
    eval: EvalConf = field(default_factory=EvalConf)
    carbon: CarbonConf = field(default_factory=CarbonConf)
    serve: ServeConf = field(default_factory=ServeConf)
    export: ExportConf = field(default_factory=ExportConf)
    privacy: PrivacyConf = field(default_factory=PrivacyConf)


# -------------------------------------------------------------------------------------------- validation
def _one_of(key: str, value, allowed: Sequence) -> None:
    if value not in allowed:
        raise ConfigError(f"{value!r} is not one of {', '.join(map(str, allowed))}", field=key)


def _finite_numbers(node, key: str = "") -> None:
    """NaN or infinity anywhere is an error: every comparison with NaN is false, so no range check catches it."""
    if isinstance(node, (dict, list)):
        for name, value in (node.items() if isinstance(node, dict) else enumerate(node)):
            _finite_numbers(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"must be a finite number, got {node}", field=key)


def _positive(key: str, value, allow_zero: bool = False) -> None:
    if value is None or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}", field=key)


def _check_source(key: str, source) -> None:
    _one_of(f"{key}.kind", source.kind, ("https", "hub", "local"))
    needs = {"https": "url", "hub": "repo_id", "local": "path"}[source.kind]
    if not source[needs]:
        raise ConfigError(f"a {source.kind} source needs {key}.{needs}", field=f"{key}.{needs}")
    if source.kind == "hub" and not source.revision:
        raise ConfigError("pin a Hub dataset to a revision (commit sha or tag)", field=f"{key}.revision")
    if source.sha256 is not None and not SHA256.fullmatch(source.sha256):
        raise ConfigError(f"{source.sha256!r} is not a sha256 (64 hexadecimal characters; quote an all-digit "
                          "one in YAML)", field=f"{key}.sha256")


# Names a breakdown cannot take: the canonical table's columns, the Alpaca row's keys, a prediction record's.
RESERVED_KEYS = ("id", "text", "label", "split", "group", "instruction", "input", "output", "system", "gold",
                 "predicted", "raw_output")


def _check_breakdowns_and_suite(cfg: DictConfig) -> None:
    """task.breakdowns (per-group results) and the functional test suite (eval.functional)."""
    task, key = cfg.task, "task.breakdowns"
    for name, b in task.breakdowns.columns.items():
        if name in RESERVED_KEYS:
            raise ConfigError(f"{name!r} is taken (a column of the canonical table, a key of the Alpaca rows or of "
                              "the predictions): name the breakdown otherwise", field=f"{key}.columns.{name}")
        if (b.column is None) == (b.flags is None):
            raise ConfigError("set either column (its values are the groups) or flags (boolean columns, one group "
                              "each)", field=f"{key}.columns.{name}")
        if b.flags is not None and (not b.flags or b.separator is not None):
            raise ConfigError("flags must list at least one column, and take no separator",
                              field=f"{key}.columns.{name}")
    if task.breakdowns.gap is not None:
        _one_of(f"{key}.gap", task.breakdowns.gap, list(task.breakdowns.columns))
    _positive("eval.min_group_size", cfg.eval.min_group_size)
    suite = cfg.eval.functional
    _check_source("eval.functional.source", suite.source)
    if suite.source.name in ("train", "dev", "test"):  # it names the suite's results beside the splits'
        raise ConfigError("the suite's results are filed under its name: choose one that is not a split",
                          field="eval.functional.source.name")
    mapping = task.functional_labels
    if task.kind == "generation":
        if mapping is not None:  # its outcome is not a label: a stop counts as hateful (functional.STOP_LABELS)
            raise ConfigError("a generation task's answer to a case is a stop or a reply, not a label (a stop counts "
                              "as hateful): leave task.functional_labels null", field="task.functional_labels")
    elif mapping is not None:
        for raw, label in mapping.items():
            _one_of("task.functional_labels", raw, ("hateful", "non-hateful"))
            _one_of(f"task.functional_labels.{raw}", label, list(task.labels.names))
        if "hateful" not in mapping or mapping["hateful"] == mapping.get("non-hateful"):
            raise ConfigError("map `hateful` to the task's hateful label (and `non-hateful`, if given, to another "
                              "one)", field="task.functional_labels")
    elif suite.enabled:
        raise ConfigError(f"task {task.name!r} has no functional_labels, so a functional suite cannot be scored "
                          "on it: set task.functional_labels.hateful (or eval.functional.enabled=false)",
                          field="task.functional_labels")


def _check_rules(cfg: DictConfig) -> None:
    """Rules a type cannot express. Each failure names the key."""
    _finite_numbers(OmegaConf.to_container(cfg))
    if not 0 <= cfg.seed < 2 ** 32:
        raise ConfigError(f"must be in [0, 2^32), got {cfg.seed}", field="seed")
    if cfg.train.seed is not None and not 0 <= cfg.train.seed < 2 ** 32:
        raise ConfigError(f"must be null or in [0, 2^32), got {cfg.train.seed}", field="train.seed")
    task = cfg.task
    _one_of("task.name", task.name, TASKS)
    _check_source("task.source", task.source)
    if not task.labels.names:
        raise ConfigError("the label set is empty", field="task.labels.names")
    if task.labels.binning is not None:
        b = task.labels.binning
        if not b.supportive_below < b.hate_above:
            raise ConfigError(f"thresholds in the wrong order: supportive_below ({b.supportive_below}) must be "
                              f"< hate_above ({b.hate_above})", field="task.labels.binning")
    elif not task.labels.map:
        raise ConfigError("a task needs either labels.map or labels.binning", field="task.labels")
    elif not task.columns.label:
        raise ConfigError("a task with labels.map needs the column holding the raw label", field="task.columns.label")
    else:
        for raw, canonical in task.labels.map.items():
            if canonical not in task.labels.names:
                raise ConfigError(f"maps {raw!r} to {canonical!r}, which is not in task.labels.names",
                                  field=f"task.labels.map.{raw}")
    split = task.split
    _one_of("task.split.strategy", split.strategy, ("upstream", "auto", "grouped", "legacy_row_split"))
    if set(split.fractions) != {"train", "dev", "test"}:
        raise ConfigError("needs exactly train, dev and test", field="task.split.fractions")
    for name, frac in split.fractions.items():
        if not 0 <= frac < 1:
            raise ConfigError(f"must be in [0, 1), got {frac}", field=f"task.split.fractions.{name}")
    if split.fractions["train"] == 0:
        raise ConfigError("must be > 0: a model cannot learn from an empty train split",
                          field="task.split.fractions.train")
    if abs(sum(split.fractions.values()) - 1) > 1e-6:
        raise ConfigError(f"must sum to 1, got {sum(split.fractions.values()):g}", field="task.split.fractions")
    if split.strategy == "legacy_row_split":
        _positive("task.split.legacy_rows", split.legacy_rows)
        if split.legacy_test_size is None or not 0 < split.legacy_test_size < 1:
            raise ConfigError("must be in (0, 1)", field="task.split.legacy_test_size")
    _one_of("task.prompt.format", task.prompt.format, ("chat", "raw"))
    if task.prompt.format == "raw":
        if not task.prompt.template or "{input}" not in task.prompt.template:
            raise ConfigError("a raw prompt needs a template containing {input}", field="task.prompt.template")
        if "{output}" not in task.prompt.completion or not task.prompt.completion.endswith("{eos}"):
            raise ConfigError("must contain {output} and end with {eos}", field="task.prompt.completion")
    _one_of("task.parser", task.parser, PARSERS)
    _check_generation_task(cfg)

    for name, n in cfg.data.max_examples.items():
        _one_of("data.max_examples", name, ("train", "dev", "test"))
        if n is not None:
            _positive(f"data.max_examples.{name}", n)
    _positive("download.retries", cfg.download.retries, allow_zero=True)
    _positive("download.timeout_s", cfg.download.timeout_s)

    from .chat_templates import TEMPLATES

    if cfg.model.chat_template is not None:
        _one_of("model.chat_template", cfg.model.chat_template, sorted(TEMPLATES))
    q = cfg.model.quantization
    _one_of("model.quantization.quant_type", q.quant_type, ("nf4", "fp4"))
    _one_of("model.quantization.compute_dtype", q.compute_dtype, ("bfloat16", "float16", "float32"))
    _one_of("model.quantization.quant_storage", q.quant_storage, ("uint8", "bfloat16", "float16", "float32"))
    targets = cfg.lora.target_modules
    if isinstance(targets, str):
        if targets != "all-linear":
            raise ConfigError(f"must be 'all-linear' or a list of module names, got {targets!r}",
                              field="lora.target_modules")
    elif not targets or not all(isinstance(t, str) and t for t in targets):
        raise ConfigError("must be 'all-linear' or a non-empty list of module names", field="lora.target_modules")
    _positive("lora.r", cfg.lora.r)
    if cfg.lora.alpha is not None:
        _positive("lora.alpha", cfg.lora.alpha)
    if not 0 <= cfg.lora.dropout < 1:
        raise ConfigError(f"must be in [0, 1), got {cfg.lora.dropout}", field="lora.dropout")
    _one_of("lora.bias", cfg.lora.bias, ("none", "all", "lora_only"))

    tr = cfg.train
    for key in ("cutoff_len", "batch_size", "grad_accum", "lr", "logging_steps", "save_steps", "save_total_limit",
                "nproc"):
        _positive(f"train.{key}", tr[key])
    for key in ("eval_steps", "eval_examples"):
        if tr[key] is not None:
            _positive(f"train.{key}", tr[key])
    if not 0 <= tr.warmup_ratio < 1:
        raise ConfigError(f"must be in [0, 1), got {tr.warmup_ratio}", field="train.warmup_ratio")
    _positive("train.warmup_steps", tr.warmup_steps, allow_zero=True)
    if tr.warmup_ratio and tr.warmup_steps:
        raise ConfigError("set warmup_steps or warmup_ratio, not both", field="train.warmup_steps")
    _positive("train.weight_decay", tr.weight_decay, allow_zero=True)
    _positive("train.max_grad_norm", tr.max_grad_norm, allow_zero=True)
    if tr.max_steps is None:
        _positive("train.epochs", tr.epochs)
    else:
        _positive("train.max_steps", tr.max_steps)
    _one_of("train.scheduler", tr.scheduler, ("linear", "cosine", "constant", "constant_with_warmup"))
    _one_of("train.precision", tr.precision, ("bf16", "fp16", "fp32"))
    _one_of("train.loss_on", tr.loss_on, ("completion", "all"))
    _one_of("train.packing", tr.packing, ("none", "shared_prefix"))
    _one_of("train.optimizer", tr.optimizer, ("adamw_torch", "adamw_torch_fused", "adamw_8bit", "adamw_bnb_8bit",
                                              "paged_adamw_8bit", "paged_adamw_32bit", "adafactor", "sgd"))
    _one_of("eval.mode", cfg.eval.mode, ("greedy", "score"))
    _one_of("eval.score_method", cfg.eval.score_method, ("full", "first_token"))
    cal = cfg.eval.calibration
    _one_of("eval.calibration.method", cal.method, ("none", "threshold"))
    _one_of("eval.calibration.objective", cal.objective, ("prevalence", "macro_f1", "precision"))
    if not 0 < cal.target_precision <= 1:
        raise ConfigError(f"must be in (0, 1], got {cal.target_precision}", field="eval.calibration.target_precision")
    if cal.positive is not None:
        _one_of("eval.calibration.positive", cal.positive, list(task.labels.names))
    if cal.method == "threshold" and "dev" not in cfg.eval.splits:
        raise ConfigError("the decision threshold is fitted on the dev split: keep dev in eval.splits",
                          field="eval.splits")
    if cal.method == "threshold" and cfg.eval.mode != "score":
        raise ConfigError("a decision threshold applies to label scores: set eval.mode=score (or "
                          "eval.calibration.method=none)", field="eval.calibration.method")
    _positive("eval.max_new_tokens", cfg.eval.max_new_tokens)
    _positive("eval.batch_size", cfg.eval.batch_size)
    for s in cfg.eval.splits:
        _one_of("eval.splits", s, ("train", "dev", "test"))
    if not cfg.eval.splits and not cfg.eval.data:
        raise ConfigError("nothing to evaluate: list splits or set eval.data", field="eval.splits")
    _check_breakdowns_and_suite(cfg)
    _positive("eval.baseline.ngram_max", cfg.eval.baseline.ngram_max)
    _positive("eval.baseline.min_df", cfg.eval.baseline.min_df)
    _positive("eval.baseline.c", cfg.eval.baseline.c)
    if cfg.carbon.hours is not None:
        _positive("carbon.hours", cfg.carbon.hours, allow_zero=True)
    for key in ("device_power_w", "pue", "carbon_intensity_kg_per_kwh"):
        _positive(f"carbon.{key}", cfg.carbon[key])
    _check_serve(cfg.serve)
    _one_of("export.qtype", cfg.export.qtype, EXPORT_QTYPES)
    if cfg.export.verify_rows is not None:
        _positive("export.verify_rows", cfg.export.verify_rows)
    if not 0 <= cfg.export.min_agreement <= 1:
        raise ConfigError(f"must be in [0, 1], got {cfg.export.min_agreement}", field="export.min_agreement")
    if not cfg.export.tie_margin >= 0:
        raise ConfigError(f"must be >= 0, got {cfg.export.tie_margin}", field="export.tie_margin")


def _check_serve(s: DictConfig) -> None:
    _one_of("serve.backend", s.backend, SERVE_BACKENDS)
    _one_of("serve.log_text", s.log_text, ("text", "hash", "none"))
    if not 0 < s.port < 65536:
        raise ConfigError(f"must be a TCP port (1-65535), got {s.port}", field="serve.port")
    for key in ("threads", "max_batch_size", "max_queue", "request_timeout_s", "max_body_bytes", "max_texts",
                "max_text_chars", "remote_timeout_s"):
        _positive(f"serve.{key}", s[key])
    _positive("serve.max_wait_ms", s.max_wait_ms, allow_zero=True)
    if s.retention_days is not None:
        _positive("serve.retention_days", s.retention_days)
    if s.max_texts > s.max_queue:
        raise ConfigError(f"a request of max_texts ({s.max_texts}) texts could never fit in the queue "
                          f"(serve.max_queue {s.max_queue})", field="serve.max_texts")
    if s.url is not None and not s.url.startswith(("http://", "https://")):
        raise ConfigError(f"must start with http:// or https://, got {s.url!r}", field="serve.url")


def _check_generation_task(cfg: DictConfig) -> None:
    """A generation task's sources, targets and reply evaluation; a classification task has none of them."""
    task = cfg.task
    _one_of("task.kind", task.kind, TASK_KINDS)
    if task.kind == "classification":
        if task.parser == "stop_message":
            raise ConfigError("stop_message is a generation task's parser (task.kind: generation)", field="task.parser")
        return
    if task.parser != "stop_message":
        raise ConfigError("a generation task's replies are parsed by stop_message", field="task.parser")
    if task.targets is None:
        raise ConfigError("a generation task needs its targets (mode, ...)", field="task.targets")
    for key, source in task.extra_sources.items():
        _one_of("task.extra_sources", key, CORPUS_READERS)
        _check_source(f"task.extra_sources.{key}", source)
    t = task.targets
    _one_of("task.targets.mode", t.mode, TARGET_MODES)
    if not (task.stop_message or "").strip():
        raise ConfigError("a generation task needs its stop message", field="task.stop_message")
    known = [task.source.name, *task.extra_sources]
    for name in t.train_sources or []:
        _one_of("task.targets.train_sources", name, known)
    _positive("task.targets.distill_max_new_tokens", t.distill_max_new_tokens)
    if t.dialogues and task.prompt.format != "chat":
        raise ConfigError("dialogue history needs a chat prompt (task.prompt.format: chat)", field="task.targets.dialogues")
    for name, n in (task.max_examples or {}).items():
        _one_of("task.max_examples", name, ("train", "dev", "test"))
        if n is not None:
            _positive(f"task.max_examples.{name}", n)
    for name, system in task.prompted_systems.items():
        if not system.strip():
            raise ConfigError("the system prompt is empty", field=f"task.prompted_systems.{name}")
    g = cfg.eval.generation
    if not g.sets or not g.decodings:
        raise ConfigError("nothing to evaluate: list sets and decodings", field="eval.generation")
    for s in g.sets:
        _one_of("eval.generation.sets", s, EVAL_SETS)
    for d in g.decodings:
        _one_of("eval.generation.decodings", d, DECODINGS)
    if g.max_prompts is not None:
        _positive("eval.generation.max_prompts", g.max_prompts)
    _positive("eval.generation.temperature", g.temperature)
    if not 0 < g.top_p <= 1:
        raise ConfigError(f"must be in (0, 1], got {g.top_p}", field="eval.generation.top_p")
    _positive("eval.generation.max_new_tokens", g.max_new_tokens)
    _positive("eval.generation.examples", g.examples, allow_zero=True)
    f = g.functional
    if f.max_per_functionality is not None:
        _positive("eval.generation.functional.max_per_functionality", f.max_per_functionality)
    if cfg.eval.functional.enabled and not f.decodings:
        raise ConfigError("the suite is enabled: list at least one decoding", field="eval.generation.functional.decodings")
    for d in f.decodings:
        _one_of("eval.generation.functional.decodings", d, DECODINGS)
    if cfg.eval.judge.hate_label not in task.labels.names:
        raise ConfigError(f"{cfg.eval.judge.hate_label!r} is not in task.labels.names", field="eval.judge.hate_label")


def validate(cfg: DictConfig | dict) -> DictConfig:
    """Merge `cfg` into the typed schema (types, unknown keys) and check the rules; raise one ConfigError."""
    try:
        typed = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        OmegaConf.to_container(typed, throw_on_missing=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or None
        msg = str(err).splitlines()[0]
        raise ConfigError(msg, field=key) from None
    _check_rules(typed)
    return typed
