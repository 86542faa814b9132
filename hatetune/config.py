"""Configuration: composing conf/ into params.yaml, and the config a stage runs with.

`python -m hatetune.config compose` rewrites params.yaml from conf/ (what `dvc exp run` also does);
`python -m hatetune.config check` fails when params.yaml and the composition of conf/ have drifted apart.

A stage sees only the params its dvc.yaml entry declares (`stage_view`): reading any other key fails with a
message naming it, so DVC's record of what a stage depends on cannot silently fall behind the code.
"""
from __future__ import annotations

import argparse
import os
import sys
import typing
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import paths
from .errors import ConfigError, HatetuneError, exit_on_error
from .io import foreign_encoding, owner_only
from .schema import Config, validate

GROUPS = ("task", "model", "lora", "train", "eval", "carbon", "serve", "export", "experiment")
PARAMS_FILE = "params.yaml"
DVC_FILE = "dvc.yaml"
_ABSENT = object()


# ----------------------------------------------------------------------------------------- composition
def conf_dir() -> Path:
    """conf/ of the project in the working directory (DVC runs stages from the repo root)."""
    local = Path.cwd() / "conf"
    return local if local.is_dir() else Path(__file__).resolve().parents[1] / "conf"


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose conf/config.yaml with Hydra overrides, exactly as `dvc exp run -S` does."""
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.errors import HydraException

    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except HydraException as err:
        raise ConfigError(_explain_hydra_error(str(err), overrides)) from None
    return cfg


def _explain_hydra_error(message: str, overrides: Sequence[str]) -> str:
    """Hydra says "Could not find 'task/foo'"; say which key was wrong and what the choices are."""
    first = message.splitlines()[0]
    for item in overrides:
        group, _, choice = item.lstrip("+~").partition("=")
        if group in GROUPS and f"'{group}/{choice}'" in message:
            known = sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
            return f"{group}: unknown choice {choice!r} (known: {', '.join(known)})"
    return first


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def is_string_key(key: str) -> bool:
    """Whether the schema types the dotted `key` as a string (a sha256, a revision, a prompt)."""
    node: Any = Config
    for part in key.split("."):
        if is_dataclass(node):
            node = typing.get_type_hints(node).get(part)
        elif typing.get_origin(node) is dict:
            node = typing.get_args(node)[1]
        else:
            return False
        args = typing.get_args(node)
        if typing.get_origin(node) is typing.Union and type(None) in args:  # Optional[X] -> X
            node = next(a for a in args if a is not type(None))
    return node is str


def keep_strings(overrides: Sequence[str]) -> list[str]:
    """Quote the value of an override whose key is a string when YAML / Hydra would read it as something else:
    an all-digit sha256 `0123…` is octal to YAML, `12e4…` a float, `1_2…` an integer."""
    kept = []
    for item in overrides:
        key, eq, value = item.partition("=")
        if eq and is_string_key(key.lstrip("+~")) and not value.startswith(("'", '"')):
            try:
                parsed = OmegaConf.from_dotlist([f"v={value}"])["v"]
            except OmegaConfBaseException:
                parsed = value
            if isinstance(parsed, (bool, int, float)):
                item = f"{key}='{value}'"
        kept.append(item)
    return kept


def read_params(params_file: Path) -> DictConfig:
    """params.yaml (or --params FILE) as a config; YAML that does not parse fails naming the file and line."""
    import yaml

    if not params_file.exists():
        raise ConfigError(f"{params_file} not found: run `make params` (python -m hatetune.config compose)")
    try:
        cfg = OmegaConf.load(params_file)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        mark = getattr(err, "problem_mark", None)
        if "<stream end>" in problem and getattr(err, "context_mark", None):  # an unclosed bracket: where it opened
            mark = err.context_mark
        context = f"{err.context}: " if getattr(err, "context", None) else ""
        raise HatetuneError(f"not valid YAML ({context}{problem})", file=str(params_file),
                            row=mark.line + 1 if mark else None) from None
    except UnicodeDecodeError:
        encoding = foreign_encoding(params_file.read_bytes()) or "not UTF-8"
        raise HatetuneError(f"the file is {encoding}: re-save it as UTF-8", file=str(params_file)) from None
    except IsADirectoryError:
        raise HatetuneError("a folder, not a YAML file", file=str(params_file)) from None
    if not isinstance(cfg, DictConfig):
        raise HatetuneError("expected a mapping of config keys (key: value) at the top level",
                            file=str(params_file), row=1)
    return cfg


def load(overrides: Sequence[str] = (), params_file: str | Path = PARAMS_FILE) -> DictConfig:
    """The validated config of a stage: params.yaml plus `key=value` overrides.

    A group choice (`task=mhs`, `+experiment=...`) recomposes from conf/ instead, with all the overrides.
    """
    overrides = keep_strings(overrides)
    if any(o.lstrip("+~").split("=", 1)[0] in GROUPS for o in overrides):
        return validate(compose(overrides))
    cfg = read_params(Path(params_file))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key = item.split("=", 1)[0].lstrip("+")
        try:
            value = OmegaConf.from_dotlist([item.lstrip("+")])
        except OmegaConfBaseException as err:
            raise ConfigError(str(err).splitlines()[0], field=key) from None
        cfg = OmegaConf.merge(cfg, value)
    return validate(cfg)


def stage_config(doc: str, stage: str, argv: Optional[Sequence[str]] = None) -> DictConfig:
    """Command line of every stage script: `--help` shows the stage's docstring; the rest are overrides.

    Returns the stage's view of the validated config (`stage_view`): the params that the dvc.yaml entry of
    `stage` declares, plus the keys overridden on the command line. Under DVC the stage is the one DVC runs
    ($DVC_STAGE: `evaluate_zeroshot` runs the evaluate script); by hand, the script's own.
    With `privacy.owner_only` (which every stage therefore declares) the stage creates its files owner-only.
    """
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Overrides use Hydra syntax: key=value (e.g. lora.r=16), or a group "
                                            "choice (task=mhs, +experiment=mhs_mistral7b) to recompose conf/.")
    parser.add_argument("overrides", nargs="*", help="key=value overrides on top of params.yaml")
    parser.add_argument("--params", default=PARAMS_FILE, help="params file (default: %(default)s)")
    args = parser.parse_args(argv)
    cfg = load(args.overrides, args.params)
    declared = declared_params(os.environ.get("DVC_STAGE") or stage, Path(args.params).resolve().parent / DVC_FILE)
    if declared is not None:  # else outside a DVC project (e.g. an installed package): nothing to keep in sync
        overridden = [o.lstrip("+~").split("=", 1)[0] for o in args.overrides if "=" in o]
        cfg = stage_view(cfg, [*declared, *(k for k in overridden if k not in GROUPS)])
    if cfg.privacy.owner_only:
        owner_only(paths.PRIVATE_DIRS)
    return cfg


def declared_params(stage: str, dvc_file: Path) -> Optional[list[str]]:
    """The params.yaml keys the dvc.yaml entry of `stage` declares; None when there is no such entry."""
    import yaml

    if not dvc_file.is_file():
        return None
    entry = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")).get("stages") or {}).get(stage)
    if entry is None:
        return None
    keys = []
    for item in entry.get("params") or []:
        if isinstance(item, str):
            keys.append(item)
        else:  # {params file: [keys]}
            keys += [k for file, names in item.items() if Path(file).name == PARAMS_FILE for k in names]
    return keys


def stage_view(cfg: DictConfig, keys: Iterable[str]) -> DictConfig:
    """Only `keys` (dotted, a key names its whole subtree) of `cfg`, in struct mode: reading anything else raises
    an OmegaConf error that `errors.exit_on_error` turns into "declare it in dvc.yaml"."""
    view = OmegaConf.create({})
    for key in sorted(set(keys), key=lambda k: k.count(".")):  # parents first: a subtree wins over its leaves
        if OmegaConf.select(view, key, default=None) is not None:
            continue
        value = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=True)
        if value is _ABSENT:
            raise ConfigError(f"dvc.yaml declares the params key {key!r}, which the config does not have",
                              field=key)
        OmegaConf.update(view, key, OmegaConf.to_container(value) if OmegaConf.is_config(value) else value,
                         merge=False, force_add=True)
    OmegaConf.set_struct(view, True)
    return view


def lora_alpha(cfg: DictConfig) -> float:
    """LoRA alpha; null means 2 x r (LLaMA-Factory's convention)."""
    return cfg.lora.alpha if cfg.lora.alpha is not None else 2 * cfg.lora.r


# ------------------------------------------------------------------------------------------------- CLI
@exit_on_error
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hatetune.config", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_compose = sub.add_parser("compose", help="write the composition of conf/ (+ overrides) to params.yaml")
    p_compose.add_argument("overrides", nargs="*")
    p_compose.add_argument("--output", default=PARAMS_FILE)
    p_check = sub.add_parser("check", help="fail if params.yaml differs from the composition of conf/")
    p_check.add_argument("--params", default=PARAMS_FILE)
    args = parser.parse_args(argv)

    if args.command == "compose":
        cfg = compose(args.overrides)
        validate(cfg)
        from .io import write_text
        write_text(args.output, to_yaml(cfg))
        print(f"wrote {args.output}")
        return 0
    composed = OmegaConf.to_container(compose(), resolve=True)
    current = OmegaConf.to_container(read_params(Path(args.params)), resolve=True)
    if composed != current:
        print(f"{args.params} differs from the composition of conf/: run `make params`", file=sys.stderr)
        return 1
    print(f"{args.params} matches conf/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
