"""Hyper-parameter grids for sweeps: ``properties/hyper/<Model>.yaml`` -> a checked search space.

Plain Python (no Ray): the grid is read and checked against the model's config before any Ray
process starts, so a misspelt parameter is a one-line error, not a traceback from a worker.

Grid file format (YAML)::

    space:
      learning_rate: [1.0e-4, 1.0e-3]             # a list = grid: every value is tried
      hidden_size: {grid: [32, 64]}               # the same, spelt out
      hidden_dropout_prob: {choice: [0.2, 0.5]}   # drawn at random, once per sample
      weight_decay: {loguniform: [1.0e-6, 1.0e-3]}
      mask_ratio: {uniform: [0.1, 0.6]}
      n_layers: {quniform: [1, 3, 1]}             # low, high, step
      attn_dropout_prob: {same_as: hidden_dropout_prob}   # tied: not swept on its own
    tune:                                          # optional sweep options (properties/tune.yaml)
      num_samples: 4

Every grid combination runs ``num_samples`` times, each time with fresh draws of the random
parameters (Ray Tune's semantics). A dotted name (``prepare.size``) reaches a nested setting.

RecBole's hyper file format is accepted too (any file that is not a YAML mapping)::

    learning_rate loguniform -8,0      # natural-log bounds, as in hyperopt: e^-8 .. e^0
    hidden_size choice [32,64]         # RecBole's default search is exhaustive: choice = grid
    dropout_prob uniform 0.1,0.5
    n_layers quniform 1,3,1
"""

import ast
import difflib
import itertools
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mbrec.config import ConfigError, _FloatLoader
from mbrec.utils import PROPERTIES_DIR

HYPER_DIR = PROPERTIES_DIR / "hyper"
SWEEP_DEFAULTS_FILE = PROPERTIES_DIR / "tune.yaml"

GRID = "grid"
CHOICE = "choice"
UNIFORM = "uniform"
LOGUNIFORM = "loguniform"
QUNIFORM = "quniform"
SAME_AS = "same_as"
KINDS = (GRID, CHOICE, UNIFORM, LOGUNIFORM, QUNIFORM, SAME_AS)
# Number of values each range kind takes: uniform/loguniform (low, high), quniform (low, high, step).
RANGE_ARITY = {UNIFORM: 2, LOGUNIFORM: 2, QUNIFORM: 3}


@dataclass
class Param:
    """One swept parameter: ``kind`` in :data:`KINDS` and its ``values`` (list, bounds or a name)."""

    name: str
    kind: str
    values: object

    @property
    def is_log(self):
        return self.kind == LOGUNIFORM

    def describe(self):
        if self.kind in (GRID, CHOICE):
            return f"{self.kind} {list(self.values)}"
        if self.kind == SAME_AS:
            return f"same as {self.values}"
        return f"{self.kind} {', '.join(str(v) for v in self.values)}"


@dataclass
class SearchSpace:
    """The parameters of one grid file and its optional sweep options (``tune:`` block)."""

    params: dict
    options: dict = field(default_factory=dict)
    source: str = ""

    @property
    def swept(self):
        """Parameters that vary (tied ``same_as`` ones excluded), in file order."""
        return [param for param in self.params.values() if param.kind != SAME_AS]

    @property
    def tied(self):
        return {param.name: param.values for param in self.params.values() if param.kind == SAME_AS}

    def grid_size(self):
        """Number of grid combinations (random parameters count once)."""
        return math.prod(len(param.values) for param in self.swept if param.kind == GRID)

    def to_dict(self):
        return {name: {param.kind: param.values} for name, param in self.params.items()}

    def describe(self):
        return "; ".join(f"{name}: {param.describe()}" for name, param in self.params.items())


def default_grid_file(model):
    return HYPER_DIR / f"{model}.yaml"


def load_search_space(path):
    """Read a grid file (our YAML format or RecBole's hyper format) into a :class:`SearchSpace`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Grid file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        content = yaml.load(text, Loader=_FloatLoader)
    except yaml.YAMLError:
        content = None
    if isinstance(content, dict):
        return _from_yaml(content, path)
    return _from_recbole_lines(text, path)


def _from_yaml(content, path):
    unknown = sorted(set(content) - {"space", "tune"})
    if unknown or not isinstance(content.get("space"), dict) or not content["space"]:
        raise ConfigError(f"Grid file {path}: expected a 'space:' mapping of parameter -> values (and an "
                          f"optional 'tune:' block){f'; unknown top-level keys {unknown}' if unknown else ''}")
    params = {name: _param_from_yaml(path, str(name), spec) for name, spec in content["space"].items()}
    options = content.get("tune") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"Grid file {path}: 'tune:' must be a mapping of sweep options")
    return _checked(SearchSpace(params, dict(options), str(path)))


def _param_from_yaml(path, name, spec):
    if isinstance(spec, list):
        spec = {GRID: spec}
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"Grid file {path}: '{name}' must be a list of values or one of "
                          f"{{kind: values}} with kind in {list(KINDS)}, got {spec!r}")
    (kind, values), = spec.items()
    return Param(name, str(kind), values)


def _from_recbole_lines(text, path):
    params = {}
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.strip().split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) < 3:
            raise ConfigError(f"Grid file {path}, line {number}: expected 'name kind values' "
                              f"(RecBole hyper format), got '{line.strip()}'")
        name, kind, raw = parts[0], parts[1], "".join(parts[2:])
        if kind == CHOICE:  # RecBole searches exhaustively by default: its choice is our grid
            try:
                values = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                raise ConfigError(f"Grid file {path}, line {number}: cannot read the list {raw}") from None
            params[name] = Param(name, GRID, values)
        elif kind in RANGE_ARITY:
            try:
                bounds = [float(value) for value in raw.split(",")]
            except ValueError:
                raise ConfigError(f"Grid file {path}, line {number}: bounds must be numbers, got {raw}") from None
            if kind == LOGUNIFORM and len(bounds) == 2:  # hyperopt's bounds are natural logs
                bounds = [math.exp(bound) for bound in bounds]
            params[name] = Param(name, kind, bounds)
        else:
            raise ConfigError(f"Grid file {path}, line {number}: unknown kind '{kind}'; RecBole's format "
                              f"has choice, uniform, quniform, loguniform")
    if not params:
        raise ConfigError(f"Grid file {path} defines no parameters")
    return _checked(SearchSpace(params, {}, str(path)))


def _checked(space):
    """Check each parameter's kind and values; raise ConfigError naming the file and parameter."""
    where = f"Grid file {space.source}"
    for param in space.params.values():
        if param.kind not in KINDS:
            raise ConfigError(f"{where}: '{param.name}' has unknown kind '{param.kind}'; use one of {list(KINDS)}")
        if param.kind in (GRID, CHOICE):
            if not isinstance(param.values, list) or not param.values:
                raise ConfigError(f"{where}: '{param.name}' needs a non-empty list of values")
        elif param.kind == SAME_AS:
            if param.values not in space.params or space.params[param.values].kind == SAME_AS:
                raise ConfigError(f"{where}: '{param.name}' is tied to '{param.values}', which is not a swept "
                                  f"parameter of this grid")
        else:
            values = param.values
            arity = RANGE_ARITY[param.kind]
            if (not isinstance(values, list) or len(values) != arity
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
                raise ConfigError(f"{where}: '{param.name}' {param.kind} needs {arity} numbers "
                                  f"({'low, high, step' if arity == 3 else 'low, high'}), got {values!r}")
            if not values[0] < values[1]:
                raise ConfigError(f"{where}: '{param.name}' needs low < high, got {values[0]} and {values[1]}")
            if param.kind == LOGUNIFORM and values[0] <= 0:
                raise ConfigError(f"{where}: '{param.name}' loguniform needs low > 0, got {values[0]}")
    if not space.swept:
        raise ConfigError(f"{where} sweeps no parameter (only tied ones)")
    return space


def check_names(space, settings, config_keys, model):
    """Every parameter must name a setting the model's run config has; raise ConfigError otherwise.

    Args:
        settings: the run's merged settings (nested mappings for dotted names).
        config_keys: the keys of the full RecBole config (RecBole's defaults and model YAML).
    """
    known = set(settings) | set(config_keys)
    for name in space.params:
        *parents, leaf = name.split(".")
        if parents:
            node = settings
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and leaf in node:
                continue
            raise ConfigError(f"Grid file {space.source}: '{name}' is not a setting of {model} "
                              f"('{'.'.join(parents)}' has no entry '{leaf}')")
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"Grid file {space.source}: '{name}' is not a config key of {model}{hint}")


def nested(params):
    """``{"prepare.size": "medium", "lr": 1}`` -> ``{"prepare": {"size": "medium"}, "lr": 1}``."""
    result = {}
    for name, value in params.items():
        *parents, leaf = name.split(".")
        node = result
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return result


def with_ties(space, params):
    """The sampled ``params`` plus every tied (``same_as``) parameter set to its source's value."""
    return {**params, **{name: params[source] for name, source in space.tied.items()}}


# Trial ids have at least this many digits (``0007``), so folders sort in trial order.
TRIAL_ID_DIGITS = 4


def distinct_configurations(space):
    """How many distinct configurations ``space`` has, or None when a parameter is continuous."""
    if any(param.kind not in (GRID, CHOICE) for param in space.swept):
        return None
    return math.prod(len(param.values) for param in space.swept)


def draw_trials(space, num_samples, seed, distinct=True):
    """Every trial of a sweep as ``[(trial_id, params)]``, fixed before any trial starts.

    Trial ``i`` takes grid point ``i % grid_size`` (in file order) of sample ``i // grid_size``;
    its random parameters come from a generator seeded by ``(seed, i)``. The same sweep seed
    draws the same trials, so a trial id stays tied to one configuration across ``--resume``.

    ``distinct``: in a space of finitely many configurations, a draw that repeats an earlier trial's
    configuration is drawn again (generator ``(seed, i, attempt)``), and the sweep has at most as many
    trials as configurations. A trial runs with the sweep's seed, so a repeat would train the same
    model again: with independent draws, 6 random trials of the suite's small grids held 4-5
    distinct configurations, i.e. less tuning budget for some models than for others, by chance.
    ``distinct=False`` is the independent draw (sweeps planned before distinct draws).
    """
    grid_params = [param for param in space.swept if param.kind == GRID]
    points = list(itertools.product(*(param.values for param in grid_params)))
    total = int(num_samples) * len(points)
    configurations = distinct_configurations(space) if distinct else None
    if configurations is not None:
        total = min(total, configurations)
    digits = max(TRIAL_ID_DIGITS, len(str(total - 1)))
    trials, seen = [], set()
    for index in range(total):
        params = _draw_one(space, grid_params, points[index % len(points)], random.Random(f"{seed}/{index}"))
        attempt = 0
        while configurations is not None and _configuration(params) in seen:
            attempt += 1
            params = _draw_one(space, grid_params, points[index % len(points)],
                               random.Random(f"{seed}/{index}/{attempt}"))
        seen.add(_configuration(params))
        trials.append((f"{index:0{digits}d}", params))
    return trials


def _configuration(params):
    return tuple(sorted((name, repr(value)) for name, value in params.items()))


def _draw_one(space, grid_params, grid_point, draw):
    """One trial's parameters: the grid point's values, the random parameters from ``draw``."""
    point = dict(zip((param.name for param in grid_params), grid_point))
    params = {}
    for param in space.swept:
        if param.kind == GRID:
            params[param.name] = point[param.name]
        elif param.kind == CHOICE:
            params[param.name] = param.values[draw.randrange(len(param.values))]
        elif param.kind == UNIFORM:
            params[param.name] = draw.uniform(*param.values)
        elif param.kind == LOGUNIFORM:
            low, high = param.values
            params[param.name] = math.exp(draw.uniform(math.log(low), math.log(high)))
        else:  # QUNIFORM: low, high, step; a whole step keeps integers integers
            low, high, step = param.values
            value = round(draw.uniform(low, high) / step) * step
            params[param.name] = int(value) if float(step).is_integer() and float(low).is_integer() else value
    return params


def sweep_defaults():
    """The sweep options in ``properties/tune.yaml`` (the lowest layer of sweep options)."""
    from mbrec.config import load_yaml

    return load_yaml(SWEEP_DEFAULTS_FILE)
