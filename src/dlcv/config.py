"""Configs: YAML recipes validated against each task's defaults, with `--set dotted.key=value` overrides.

The defaults dict of a task *is* its schema: a key that is not in it is an error naming the valid keys,
and a value must have the default's type (ints are accepted where floats are expected; a `None` default
accepts anything). Enumerated keys list their choices in CHOICES, so a bad value names the valid ones.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
import shlex
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence, get_origin

import yaml

from dlcv.fileio import reading


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` (no dot) as a string; everyone writing a learning rate means a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."))


# YAML aliases (*name) share one object, which every walk over a config (merge, checks, saving) expands:
# nine nested aliases of nine make 9^9 values from a few hundred bytes. A config larger than this, once
# expanded, is refused.
MAX_YAML_VALUES = 100_000


def _yaml(text: str):
    try:
        data = yaml.load(text, Loader=_Loader)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None
    if _expanded_size(data, {}) > MAX_YAML_VALUES:
        raise yaml.YAMLError(f"more than {MAX_YAML_VALUES:,} values once its aliases (*name) are expanded")
    return data


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Values in `node` with every shared (aliased) part counted each time it appears; a part that
    contains itself counts as too many."""
    if not isinstance(node, (dict, list)):
        return 1
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_YAML_VALUES + 1  # while counting: a cycle back here is over the limit
    children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
    memo[id(node)] = 1 + sum(_expanded_size(child, memo) for child in children)
    return memo[id(node)]


class ConfigError(ValueError):
    """A config key or value that is not valid; the message names the key and what is allowed."""


# Keys shared by every task (the issue fixes these names); tasks add their own on top.
COMMON_DEFAULTS: dict[str, Any] = {
    "task": "",
    "device": "auto",
    # data.in_memory: each split decoded once into memory (auto: where it fits, else streamed from disk by
    # data.workers DataLoader workers; null = as many as the cores allow), see data/sources.py
    "data": {"root": None, "in_memory": "auto", "workers": None, "cache_dir": None, "limit_train": None,
             "mean": None, "std": None},
    "model": {"name": "", "weights": None, "options": {}},
    "optim": {"name": "adam", "lr": 1e-3, "weight_decay": 0.0, "momentum": 0.9, "nesterov": False,
              "betas": [0.9, 0.999], "decay_norm_and_bias": True,
              "lr_mult": {}},  # {parameter-name prefix: lr factor}, e.g. {encoder: 0.1}
    "sched": {"name": "constant", "milestones": [], "gamma": 0.1, "warmup_epochs": 0.0,
              "final_lr_ratio": 0.0},
    # precision / channels_last `auto`: chosen per device (and model) from measurements, see
    # engine/precision.py resolve_precision and resolve_channels_last.
    "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 256, "max_steps": None, "max_seconds": None,
              "precision": "auto", "seed": 0, "channels_last": "auto", "compile": False,
              "sync_batchnorm": False,
              "grad_clip": None, "log_every": 20,
              # validate every N epochs (Lightning's check_val_every_n_epoch); the last epoch always is
              "eval_every": 1,
              # exponential moving average of the weights (timm's --model-ema-decay): validation, snapshots
              # and every saved "model" use it; null = off
              "ema_decay": None},
    # epochs whose features/masks are kept (null = first, middle, last); figures: draw the run's figures when it
    # ends (false: a sweep's or a smoke run's, minutes of matplotlib saved; the snapshots stay)
    "snapshot": {"epochs": None, "figures": True},
}

COMMON_CHOICES: dict[str, tuple] = {
    "device": ("auto", "cpu", "cuda"),
    "optim.name": ("adam", "adamw", "sgd"),
    "sched.name": ("constant", "multistep", "cosine", "onecycle"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.channels_last": ("auto", True, False),
    "data.in_memory": ("auto", True, False),
}


# Keys that take `auto` besides a value of their type (checked further in COMMON_RANGES).
AUTO_KEYS = {"train.epochs"}

# Types of keys whose default is null (null stays allowed); list[float]: a list whose whole numbers are read as
# floats, like a float key's (torch refuses an int where it draws or scales with a float).
COMMON_NULLABLE_TYPES: dict[str, type] = {
    "data.root": str, "model.weights": str, "train.max_steps": int, "train.max_seconds": float, "train.grad_clip": float,
    "train.ema_decay": float, "snapshot.epochs": list, "data.mean": list[float], "data.std": list[float],
    "data.workers": int, "data.cache_dir": str, "data.limit_train": int,
}


# Ranges of numeric keys: (low, high, what the message says). Checked after types, on whichever keys the
# task has; null stays allowed where the key is nullable.
MAX_SIDE = 2048  # pixels: the largest image / input / crop side a config may ask for


def _positive(v): return v > 0
def _non_negative(v): return v >= 0


# Reusable range checks for task schemas (keys several tasks have under the same meaning). Image sizes are
# bounded: the data is held in memory at this size (100,000 px would be 30 GB per image).
IMAGE_SIDE = (lambda v: 1 <= v <= MAX_SIDE, f"a whole number in 1..{MAX_SIDE}")
IMAGE_SIDE_OR_NULL = (lambda v: 1 <= v <= MAX_SIDE, f"a whole number in 1..{MAX_SIDE} (or null)")
COUNT_OR_NULL = (_positive, "a whole number >= 1 (or null)")
LABEL_SMOOTHING = (lambda v: 0 <= v < 1, "a number in [0, 1)")
NON_NEGATIVE_WEIGHT = (_non_negative, "a number >= 0")


def numbers(v, n: int | None = None) -> bool:
    """A list of `n` numbers (any length >= 1 for None), bools excluded."""
    return isinstance(v, list) and (len(v) == n if n is not None else len(v) >= 1) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)


def fraction_range(v) -> bool:
    return numbers(v, 2) and 0 < v[0] <= v[1] <= 1


def whole(low: int, high: int | None = None):
    """A range check of a whole number in low..high (no upper end for None)."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v and (high is None or v <= high)


FRACTION_RANGE = (fraction_range, "[min, max] with 0 < min <= max <= 1")
PROBABILITY = (lambda v: 0 <= v <= 1, "a probability in [0, 1]")
POSITIVE_RANGE = (lambda v: numbers(v, 2) and 0 < v[0] <= v[1], "[min, max] with 0 < min <= max")

# Ranges of the keys every task has (COMMON_DEFAULTS, and the data keys all tasks share); a task's own
# keys have theirs in its Schema.
COMMON_RANGES: dict[str, tuple] = {
    "train.epochs": (lambda v: v == "auto" or isinstance(v, int) and v > 0,
                     "a whole number >= 1, or auto (as many as fit train.max_seconds)"),
    "train.max_steps": (_positive, "a whole number >= 1 (or null)"),
    "train.max_seconds": (_positive, "a number of seconds > 0 (or null)"),
    "train.batch_size": (_positive, "a whole number >= 1"),
    "train.eval_batch_size": (_positive, "a whole number >= 1"),
    "train.log_every": (_positive, "a whole number >= 1"),
    "train.eval_every": (_positive, "a whole number >= 1"),
    "train.grad_clip": (_positive, "a number > 0 (or null)"),
    "train.ema_decay": (lambda v: 0 < v < 1, "a number in (0, 1) (or null)"),
    "optim.lr": (_non_negative, "a number >= 0"),
    "optim.weight_decay": (_non_negative, "a number >= 0"),
    "optim.momentum": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "sched.warmup_epochs": (_non_negative, "a number >= 0"),
    "sched.gamma": (_positive, "a number > 0"),
    "train.seed": (lambda v: 0 <= v < 2 ** 31, "a whole number in 0..2147483647"),
    "optim.betas": (lambda v: len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                  and 0 <= x < 1 for x in v), "[beta1, beta2], each in [0, 1)"),
    "data.limit_train": COUNT_OR_NULL,
    "data.workers": (_non_negative, "a whole number >= 0 (0: decode in the training process; null: auto)"),
    "data.mean": (lambda v: len(v) == 3 and all(isinstance(x, (int, float)) for x in v), "3 numbers (R, G, B)"),
    "data.std": (lambda v: len(v) == 3 and all(isinstance(x, (int, float)) and x > 0 for x in v),
                 "3 numbers > 0 (R, G, B)"),
    "snapshot.epochs": (lambda v: all(isinstance(e, int) and not isinstance(e, bool) for e in v),
                        "a list of whole epoch numbers (or null)"),
    "sched.milestones": (lambda v: v == [] or numbers(v) and all(m > 0 for m in v),
                         "a list of epochs > 0 where the lr is multiplied by sched.gamma, e.g. [5, 10]"),
    "sched.final_lr_ratio": (lambda v: 0 <= v <= 1, "a fraction of optim.lr in [0, 1]"),
}


FLOAT32_MAX = 3.4028234663852886e38  # torch turns config numbers into float32 tensors or factors
FLOAT32_TINY = 1.1754943508222875e-38  # float32's smallest normal number: anything smaller is 0 or imprecise
INT64_MAX = 2 ** 63 - 1  # torch's whole numbers (sizes, counts, seeds) are 64-bit


def _check_finite(node: Any, prefix: str = "") -> None:
    """inf and nan (YAML's .inf / .nan) are no value of any key (a learning rate of .inf turns every weight
    into nan), nor a number beyond float32's range (torch refuses 1e39 as a learning rate) or so close to 0
    that float32 holds 0 (a mixing alpha of 1e-50 is then no distribution), nor a whole number beyond 64 bits
    (an evaluation batch of 10**20)."""
    if isinstance(node, float) and not (math.isfinite(node) and abs(node) <= FLOAT32_MAX):
        raise ConfigError(f"config key '{prefix}': invalid value {node!r}; expected a finite number "
                          "(within float32's range, 3.4e38)")
    if isinstance(node, float) and 0 < abs(node) < FLOAT32_TINY:
        raise ConfigError(f"config key '{prefix}': invalid value {node!r}; expected 0 or a number of at least "
                          "1.2e-38 in size (float32 holds a smaller one as 0)")
    if isinstance(node, int) and not isinstance(node, bool) and abs(node) > INT64_MAX:
        raise ConfigError(f"config key '{prefix}': invalid value {node!r}; expected a whole number within 64 bits "
                          "(9.2e18)")
    if isinstance(node, dict):
        for key, value in node.items():
            _check_finite(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, list):
        for value in node:
            _check_finite(value, prefix)


def _check_decay_step(cfg: dict) -> None:
    """SGD and AdamW scale the weights by (1 - lr x weight_decay) at every step: from lr x weight_decay >= 1
    on, that flips and grows them (1e30 overflowed within two steps). Adam's decay goes through its
    normalised gradient instead and stays bounded."""
    o = cfg.get("optim", {})
    if o.get("name") in ("sgd", "adamw") and o["lr"] * o["weight_decay"] >= 1:
        raise ConfigError(f"config key 'optim.weight_decay': invalid value {o['weight_decay']!r} with optim.lr "
                          f"{o['lr']!r}; expected optim.lr x optim.weight_decay < 1 (each step scales the weights "
                          "by 1 - their product)")


def _check_lr_mult(cfg: dict) -> None:
    for prefix, mult in cfg["optim"]["lr_mult"].items():
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or mult < 0:
            raise ConfigError(f"config key 'optim.lr_mult.{prefix}': expected a number >= 0, got {mult!r}")


def _check_ranges(cfg: dict, task_ranges: dict[str, tuple]) -> None:
    for key, (ok, what) in {**COMMON_RANGES, **task_ranges}.items():
        try:
            value = get(cfg, key)
        except (KeyError, TypeError):
            continue  # a key this task does not have
        if value is not None and not ok(value):
            raise ConfigError(f"config key '{key}': invalid value {value!r}; expected {what}")
    if cfg["train"]["epochs"] == "auto" and cfg["train"]["max_seconds"] is None:
        raise ConfigError("config key 'train.epochs': auto needs train.max_seconds (the budget the epochs are "
                          "fitted to)")


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value parsed as YAML, so 1e-3, true, null and [5, 10] work)."""
    if "=" not in item:
        raise ConfigError(f"--set expects dotted.key=value, got {item!r}")
    key, raw = item.split("=", 1)
    try:
        value = _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}: {exc}") from None
    return key.strip().split("."), value


def nest(path: list[str], value: Any) -> dict:
    for key in reversed(path):
        value = {key: value}
    return value


def _default_type(default: Any) -> type:
    """A default's type; list[float] for a list of floats (its whole numbers are read as floats)."""
    if isinstance(default, list) and default and all(isinstance(x, float) for x in default):
        return list[float]
    return type(default)


def _check(node: Any, schema: Any, choices: dict[str, tuple], prefix: str, free: set[str],
           nullable_types: dict[str, type]) -> None:
    if isinstance(schema, dict) and prefix not in free:
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{prefix}' must be a mapping with keys {sorted(schema)}")
        for key, value in node.items():
            dotted = f"{prefix}.{key}" if prefix else key
            if key not in schema:
                raise ConfigError(f"unknown config key '{dotted}'; valid keys"
                                  f"{' under ' + repr(prefix) if prefix else ''}: {', '.join(sorted(schema))}")
            _check(value, schema[key], choices, dotted, free, nullable_types)
        return
    if prefix in choices:  # a listed choice is valid whatever its type (e.g. "auto" or a bool)
        if node not in choices[prefix] or type(node) not in {type(c) for c in choices[prefix]}:  # 1 == True
            raise ConfigError(f"config key '{prefix}': invalid value {node!r}; valid choices: "
                              f"{', '.join(map(str, choices[prefix]))}")
        return
    if prefix in free and not isinstance(node, dict):
        raise ConfigError(f"config key '{prefix}': expected a mapping ({{}} for none), got {node!r}")
    if node is None or prefix in free or prefix in AUTO_KEYS and node == "auto":
        return
    expected = _default_type(schema) if schema is not None else nullable_types.get(prefix)
    if expected is None:
        return
    if expected is bool:
        ok = isinstance(node, bool)
    elif expected in (int, float):
        ok = isinstance(node, (int, expected)) and not isinstance(node, bool)
    else:
        ok = isinstance(node, get_origin(expected) or expected)
    if not ok:
        raise ConfigError(f"config key '{prefix}': expected {expected.__name__}, got {node!r}")


def _as_floats(node: Any, schema: Any, prefix: str, free: set[str], nullable_types: dict[str, type]) -> Any:
    """`node` (checked) with the whole numbers of float keys and of list[float] keys as floats:
    `mix.cutmix_alpha: 1`, as one writes it, must be 1.0 to torch, which draws no Beta sample from an int.
    After every check, so that messages show the values as the user wrote them."""
    if isinstance(schema, dict) and prefix not in free:
        for key, value in node.items():
            node[key] = _as_floats(value, schema[key], f"{prefix}.{key}" if prefix else key, free, nullable_types)
        return node
    expected = _default_type(schema) if schema is not None else nullable_types.get(prefix)
    if expected is float:
        return _as_float(node)
    if expected == list[float] and isinstance(node, list):
        return [_as_float(x) for x in node]
    return node


def _as_float(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)  # within float32's range: checked before
    return value


# mappings whose keys are the user's (a model's options, parameter-name prefixes), not the schema's
FREE_FORM = frozenset({"model.options", "optim.lr_mult"})


def resolve(task_defaults: dict, task_choices: dict[str, tuple], task_types: dict[str, type],
            recipe: dict | None = None, overrides: list[str] = (), free: set[str] = FREE_FORM,
            task_ranges: dict[str, tuple] | None = None, task_checks: Sequence[Callable[[dict], None]] = ()) -> dict:
    """Merge defaults <- recipe <- overrides and validate the result against the defaults, the ranges and
    the task's checks of keys against each other."""
    schema = deep_merge(COMMON_DEFAULTS, task_defaults)
    choices = {**COMMON_CHOICES, **task_choices}
    cfg = deep_merge(schema, recipe or {})
    for item in overrides:
        path, value = parse_override(item)
        if ".".join(path) in free:  # free-form mappings (model.options) are replaced, not merged:
            cfg = deep_merge(cfg, nest(path, None))  # options of another model must not linger
        cfg = deep_merge(cfg, nest(path, value))
    nullable_types = {**COMMON_NULLABLE_TYPES, **task_types}
    _check(cfg, schema, choices, "", set(free), nullable_types)
    _check_finite(cfg)
    _check_ranges(cfg, task_ranges or {})
    _check_decay_step(cfg)
    _check_lr_mult(cfg)
    for check in task_checks:
        check(cfg)
    return _as_floats(cfg, schema, "", set(free), nullable_types)


@dataclass(frozen=True)
class Schema:
    """One task's config, written once: its defaults (on top of COMMON_DEFAULTS), the allowed values of its
    choice keys (a function: the model names come from the registry when asked), the types of its keys
    whose default is null, the ranges of its numeric keys ((check, what the message says), on top of
    COMMON_RANGES) and checks of its keys against each other (each raises ConfigError)."""
    defaults: dict
    choices: Callable[[], dict[str, tuple]]
    types: dict[str, type]
    ranges: dict[str, tuple] = field(default_factory=dict)
    checks: tuple[Callable[[dict], None], ...] = ()

    @property
    def task(self) -> str:
        return self.defaults["task"]

    def resolve(self, recipe: dict | None = None, overrides: Sequence[str] = ()) -> dict:
        return resolve(self.defaults, self.choices(), self.types, recipe, list(overrides),
                       task_ranges=self.ranges, task_checks=self.checks)


def dataclass_defaults(cls) -> dict[str, Any]:
    """A settings dataclass's fields and defaults as a config section (tuples as YAML lists): the dataclass
    is the one place its keys are written."""
    return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default for f in fields(cls)}


def set_args(overrides: Sequence[str]) -> list[str]:
    """["k=v", ...] -> the argv ["--set", "k=v", ...]."""
    return [a for o in overrides for a in ("--set", o)]


def set_flags(overrides: Sequence[str]) -> str:
    """["k=v", ...] -> "--set 'k=v' ..." for a printed command line."""
    return " ".join(f"--set {shlex.quote(o)}" for o in overrides)


def set_item(key: str, value: Any) -> str:
    """A --set item that gives `key` exactly `value`: written as JSON, which YAML reads as the same value (a
    path holding `#` or `: ` would otherwise be cut at a comment or read as a mapping)."""
    return f"{key}={json.dumps(value, ensure_ascii=False)}"


def with_root(recipe: dict, root: str | Path) -> dict:
    """`recipe` with data.root set to `root`: a path merged as a value, never parsed as YAML text."""
    return deep_merge(recipe, {"data": {"root": str(root)}})


RECIPES = Path(__file__).parent / "configs"


def find_recipe(name: str | Path) -> Path:
    """A config file path, or the name of a shipped recipe (`p1_model_a` = configs/p1_model_a.yaml)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = RECIPES / f"{path.stem}.yaml"
    if path.parent == Path(".") and shipped.is_file():
        return shipped
    available = ", ".join(sorted(p.stem for p in RECIPES.glob("*.yaml")))
    raise ConfigError(f"config file not found: {path} (shipped recipes: {available})")


def shipped_recipes(task: str) -> list[str]:
    """The shipped recipes of a task, by name. Read from each file's top-level `task:` line rather than by
    parsing the YAML, so that the command line can list them in its help at no cost."""
    line = re.compile(rf"^task:\s*{re.escape(task)}\s*(#.*)?$", re.M)
    return sorted(p.stem for p in RECIPES.glob("*.yaml") if line.search(p.read_text(encoding="utf-8")))


def load_yaml(path: str | Path) -> dict:
    path = find_recipe(path)
    try:
        with reading(path, "recipe", ConfigError):
            data = _yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text (a YAML recipe is expected)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def env_whole_number(name: str, default: int, minimum: int = 0) -> int:
    """A whole-number environment variable (torchrun's RANK, WORLD_SIZE, LOCAL_RANK), checked."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigError(f"environment variable {name}={raw!r}: expected a whole number >= {minimum}")
    return value


def get(cfg: dict, dotted: str) -> Any:
    node = cfg
    for key in dotted.split("."):
        node = node[key]
    return node


def dump(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False)
