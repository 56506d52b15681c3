"""`--config FILE` and `--print-config`: a command's options as a YAML (or JSON) file, as LightningCLI's
`--config`/`--print_config` and timm's `-c args.yaml` do.

A file is either a flat mapping of option names to values (`epochs: 3`, `valid-pct` or `valid_pct`, plus
`recipe:` and `out:`), which is what --print-config writes, or a run's own config.json: its resolved options
(the same schedule, data and model: the run is repeated exactly) with the machine's options as the run asked
them (device, precision, workers, cache: resolved again on this machine), as `--resume` does. Flags given on the
command line override the file. Light: no torch, so --print-config reads no data and imports nothing heavy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import BadInput, did_you_mean
from trainer.options import AUG_DEFAULTS, OPTIONS, Option, parse_lr

# A run's config.json: what the repeat takes from "asked" instead of the resolved "options" (this machine decides
# them again), and what it never takes (where the run went and its name: the repeat is a new run)
ASKED = ("device", "precision", "workers", "cache")
NOT_REPEATED = ("out", "name")
FILE_KEYS = ("recipe", "out")  # besides the command's options


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    recipe: str | None
    options: dict  # by option name; only the ones the file sets
    out: str | None = None
    run: bool = False  # a run's config.json


def read_config_file(path: Path, allowed) -> ConfigFile:
    """The options a --config file sets, each checked against its definition, or a one-line BadInput naming the
    file and the key. `allowed`: the command's options (fit's, lr-find's, submit's). A run directory stands for
    its config.json."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if not path.is_file():
        raise BadInput(f"--config {path} {'is a folder' if path.is_dir() else 'does not exist'}; give a YAML or JSON "
                       f"file of options (what --print-config writes, or a run's config.json)")
    data = parse(path)
    if data is None:
        raise BadInput(f"--config {path} is empty; write one option per line, e.g. 'epochs: 3' (or use "
                       f"--print-config > {path.name} for every option)")
    if not isinstance(data, dict):
        raise BadInput(f"--config {path} must hold a mapping of option: value (e.g. 'epochs: 3'), got a "
                       f"{type(data).__name__}")
    if isinstance(data.get("options"), dict) and isinstance(data.get("recipe"), dict):
        return run_config(path, data, allowed)
    return flat_config(path, data, allowed)


def parse(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise BadInput(f"--config {path} cannot be read ({getattr(e, 'strerror', None) or e}); give a readable "
                       f"YAML or JSON file") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text) if text.strip() else None
        except json.JSONDecodeError as e:
            raise BadInput(f"--config {path} is not valid JSON (line {e.lineno}: {e.msg}); fix it, or write YAML "
                           f"in a .yaml file") from None
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise BadInput(f"--config {path} is not valid YAML ({where}{getattr(e, 'problem', None) or e}); "
                       f"write one 'option: value' per line") from None


def flat_config(path: Path, data: dict, allowed) -> ConfigFile:
    allowed = tuple(allowed)
    options, recipe, out = {}, None, None
    seen = {}
    for key, value in data.items():
        name = str(key).strip().replace("-", "_")
        if name in seen:  # valid-pct and valid_pct both given
            raise BadInput(f"--config {path}: '{key}' and '{seen[name]}' set the same option; keep one")
        seen[name] = key
        if name in OPTIONS and name not in allowed:  # fit's schedule in a file lr-find reads: not lr-find's to use
            continue
        if name not in (*allowed, *FILE_KEYS):
            raise BadInput(f"--config {path}: unknown key '{key}'{did_you_mean(name, (*FILE_KEYS, *allowed))}; the "
                           f"keys are recipe, out and the options --help lists (epochs, lr, bs, ..., with _ or -)")
        if value is None:  # null: not set, so the recipe (or the machine) decides, as --print-config shows it
            continue
        if name in FILE_KEYS:
            if not isinstance(value, str) or not value.strip():
                raise BadInput(f"--config {path}: '{key}' must be a {'recipe name' if name == 'recipe' else 'folder'}"
                               f", got {value!r}")
            recipe, out = (value, out) if name == "recipe" else (recipe, value)
            continue
        options[name] = typed(path, key, OPTIONS[name], value)
    return ConfigFile(path, recipe, options, out)


def typed(path: Path, key: str, option: Option, value):
    """A file's value as the option's type (YAML reads 1e-3 as a string, an index 0 as a number), then checked
    by the option's own definition; a refusal names the file and the key."""
    try:
        if option.name == "lr":
            value = parse_lr(value)
        elif option.bare and isinstance(value, bool):  # `mlflow: true`: the flag alone, as from Python
            pass
        elif option.kind is bool:
            if not isinstance(value, bool):
                raise BadInput(f"{option.flag} must be true or false, got {value!r}")
        elif option.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise BadInput(f"{option.flag} must be a whole number, got {value!r}")
        elif option.kind is float:
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise BadInput(f"{option.flag} must be a number{option.example_text()}, got {value!r}") from None
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise BadInput(f"{option.flag} must be a number{option.example_text()}, got {value!r}")
            value = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)  # fn_col: 0, name: 2024
        elif not isinstance(value, str):
            raise BadInput(f"{option.flag} must be a string, got {value!r}")
        option.check(value)
    except BadInput as e:
        raise BadInput(in_file(path, key, option, str(e))) from None
    return value


def in_file(path: Path, key: str, option: Option, message: str) -> str:
    """'--epochs must be ...' as 'FILE: 'epochs' must be ...': the key as the file writes it."""
    if message.startswith(option.flag + " "):
        return f"--config {path}: '{key}' {message[len(option.flag) + 1:]}"
    return f"--config {path}: '{key}': {message}"


def run_config(path: Path, data: dict, allowed) -> ConfigFile:
    """A run's config.json: validated as config.json is (rundir), then its options for a repeat."""
    from trainer.runs.rundir import check_options, field

    recipe = field(data, path, "recipe.name", str, "a recipe name")
    resolved = field(data, path, "options", dict, "an object of the run's options")
    asked = field(data, path, "asked", dict, "an object of the options asked", optional=True) or {}
    for where, values in (("options", resolved), ("asked", asked)):
        check_options(path, where, {"recipe": recipe, **values})
    options = {}
    for name in allowed:
        if name in NOT_REPEATED:
            continue
        value = asked.get(name) if name in ASKED else resolved.get(name)
        if value is not None:
            options[name] = value
    return ConfigFile(path, recipe, options, run=True)


def displaced(name: str, value) -> tuple[str, ...]:
    """The file's options a flag given replaces along with its own (the file's resolved augmentation parameters
    under --no-aug, its --label-re under --labels, ...), so a variation of a file is not a contradiction."""
    if name == "aug" and value is False:
        return tuple(AUG_DEFAULTS)
    if name in AUG_DEFAULTS:  # a parameter implies --aug: a file's `aug: false` yields
        return ("aug",)
    if name == "weights":
        return ("pretrained",)
    if name == "pretrained" and value is False:
        return ("weights",)
    if name == "labels":
        return ("label_re",)
    if name == "label_re":
        return ("labels", "fn_col", "label_col", "valid_col", "label_delim", "threshold")
    if name == "valid_pct":
        return ("valid_col",)
    if name == "valid_col":
        return ("valid_pct",)
    return ()


def merged(found: ConfigFile, given: dict) -> dict:
    """The file's options under the ones given on the command line (None: not given)."""
    given = {name: value for name, value in given.items() if value is not None}
    gone = {other for name, value in given.items() for other in displaced(name, value)}
    return {**{name: value for name, value in found.options.items() if name not in gone}, **given}


def as_yaml(values: dict, command: str) -> str:
    """A resolved configuration as --config reads it back: recipe, the options in their definitions' order, out."""
    import yaml

    header = (f"# trainer {command}: the resolved options (`trainer {command} --config FILE` reads them back; flags "
              f"given override them)\n# null: not set, decided when the run starts (the machine's device, workers, "
              f"cache) or not applying\n")
    return header + yaml.safe_dump(values, sort_keys=False, default_flow_style=False, allow_unicode=True)


def printable(cfg, allowed) -> dict:
    """A FitConfig's values for as_yaml: the recipe, the command's options, where the runs go."""
    values = cfg.to_dict()
    return {"recipe": cfg.recipe, **{name: values.get(name) for name in OPTIONS if name in allowed},
            "out": values.get("out")}
