"""The config contract: every option composes into its schema, presets keep their promised values and run, debug
presets do what they say, validate() fires every range rule and cross check, and the CLI says a bad value in one
line with exit code 2 before anything is written.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import MISSING, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnlab.config import CONF_DIR
from cnnlab.config.checks import validate
from cnnlab.config.messages import explain, yaml_text
from cnnlab.config.schema import GROUPS, SCHEMAS, Config
from cnnlab.errors import ConfigError
from tests.helpers import cli, compose_config, compose_hydra, composed, run_app

SCHEMA_GROUPS = ("task", "model", "dataset", "optimizer", "scheduler", "trainer", "runtime", "logger", "paths")
OPTIONS = [(group, path.stem) for group in SCHEMA_GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]
LAUNCHERS = sorted(path.stem for path in (CONF_DIR / "launcher").glob("*.yaml"))
EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
TINY_RESNET = ["model.depth=8", "model.width=4"]


def yaml_of(group: str, option: str) -> dict[str, Any]:
    return yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text())


def history(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines() if line.strip()]


def metrics(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "metrics.json").read_text())


# ---------------------------------------------------------------- 1. every option composes into its schema


def test_the_schema_groups_are_the_config_groups():
    assert set(GROUPS) == set(SCHEMA_GROUPS)
    for group in SCHEMA_GROUPS:
        options = {stem for g, stem in OPTIONS if g == group}
        assert options, f"conf/{group}/ has no options"
    assert {stem for g, stem in OPTIONS if g == "model"} == {"mlp", "resnet"}
    assert {stem for g, stem in OPTIONS if g == "optimizer"} == {"sgd", "adam", "adamw"}


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_into_its_schema(group, option):
    raw = yaml_of(group, option)
    entry = re.compile(rf"^/schema_{group}_(\w+)@_here_$")  # cnnlab.config.schema.register() stores the schemas so
    declared = [m[1] for d in raw["defaults"] if isinstance(d, str) and (m := entry.match(d))]
    assert len(declared) == 1 and raw["defaults"][0] == f"/schema_{group}_{declared[0]}@_here_", raw["defaults"]
    (schema_name,) = declared
    assert schema_name in SCHEMAS[group], f"{group}/{option}.yaml names an unregistered schema {schema_name}"

    cfg = composed(f"{group}={option}")
    assert OmegaConf.get_type(cfg[group]) is SCHEMAS[group][schema_name]
    validate(cfg)  # every shipped option is within its ranges
    for key, value in raw.items():  # the YAML's own values made it in (no interpolations here to resolve)
        if key != "defaults" and not isinstance(value, (dict, list)) and not str(value).startswith("${"):
            assert cfg[group][key] == (float(value) if isinstance(cfg[group][key], float) else value), key


@pytest.mark.parametrize("option", sorted(stem for g, stem in OPTIONS if g == "model"))
def test_model_options_instantiate_for_the_dataset(tmp_path, option):
    cfg = composed(f"model={option}", *(TINY_RESNET if option == "resnet" else []))
    model = instantiate(cfg.model)
    assert isinstance(model, torch.nn.Module)
    x = torch.zeros(2, *cfg.dataset.shape)
    assert model(x).shape == (2, cfg.dataset.num_classes)


@pytest.mark.parametrize("option", sorted(stem for g, stem in OPTIONS if g == "dataset"))
def test_dataset_options_shape_the_model(tmp_path, option):
    cfg = composed(f"dataset={option}", "model=resnet", *TINY_RESNET)
    model = instantiate(cfg.model)
    assert cfg.model.in_channels == cfg.dataset.shape[0] and cfg.model.num_classes == cfg.dataset.num_classes
    assert model(torch.zeros(2, *cfg.dataset.shape)).shape == (2, cfg.dataset.num_classes)
    assert len(cfg.dataset.mean) == len(cfg.dataset.std) == cfg.dataset.shape[0]
    if cfg.dataset.classes is not None:
        assert len(cfg.dataset.classes) == cfg.dataset.num_classes


@pytest.mark.parametrize(
    ("option", "cls"),
    [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)],
)
def test_optimizer_options_are_partials_of_torch_optimizers(tmp_path, option, cls):
    assert {stem for g, stem in OPTIONS if g == "optimizer"} == {"sgd", "adam", "adamw"}
    cfg = composed(f"optimizer={option}")
    optimizer = instantiate(cfg.optimizer)(instantiate(cfg.model).parameters())
    assert type(optimizer) is cls
    group = optimizer.param_groups[0]  # the composed values (the schema's defaults) reach torch
    assert group["lr"] == pytest.approx(cfg.optimizer.lr)
    assert group["weight_decay"] == pytest.approx(cfg.optimizer.weight_decay)
    if option == "sgd":
        assert group["momentum"] == pytest.approx(cfg.optimizer.momentum)
        assert group["nesterov"] is cfg.optimizer.nesterov


def test_adamw_is_not_adam_with_another_name(tmp_path):
    adam = composed("optimizer=adam").optimizer
    adamw = composed("optimizer=adamw").optimizer
    assert (adam._target_, adamw._target_) == ("torch.optim.Adam", "torch.optim.AdamW")
    assert adam.weight_decay == 0.0 and adamw.weight_decay == 0.05


@pytest.mark.parametrize("option", sorted(stem for g, stem in OPTIONS if g == "scheduler"))
def test_scheduler_options_are_factor_partials(tmp_path, option):
    cfg = composed(f"scheduler={option}")
    factor = instantiate(cfg.scheduler)(steps_per_epoch=10, total_steps=1000)
    assert callable(factor)
    assert factor(0) == pytest.approx(1.0)  # no warm-up in any shipped option
    lr = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), factor)
    assert lr.get_last_lr() == [pytest.approx(0.1)]
    if option == "none":
        assert factor(999) == 1.0
    elif option == "multistep":  # milestones [50, 75] epochs of 10 steps
        assert factor(499) == pytest.approx(1.0) and factor(500) == pytest.approx(0.1)
        assert factor(750) == pytest.approx(0.01)
    elif option == "cosine":
        assert factor(500) == pytest.approx(0.5) and factor(1000) == pytest.approx(cfg.scheduler.min_factor)


@pytest.mark.parametrize("option", sorted(stem for g, stem in OPTIONS if g == "logger"))
def test_logger_options_instantiate_loggers(tmp_path, option):
    cfg = composed(f"logger={option}")
    logger = instantiate(cfg.logger)
    assert callable(logger.start) and callable(logger.finish)
    assert type(logger).__name__ == cfg.logger._target_.rsplit(".", 1)[1]
    if option == "wandb":
        assert logger.mode == "offline" and logger.project == "cnnlab"
    else:
        logger.start({}, tmp_path, "x")
        logger.finish()


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_launcher_options_compose(launcher):
    if launcher in ("submitit_local", "slurm"):
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    raw = yaml_of("launcher", launcher)
    cfg = compose_hydra(f"launcher={launcher}")
    (override,) = [d["override /hydra/launcher"] for d in raw["defaults"]]
    assert cfg.hydra.runtime.choices["hydra/launcher"] == override
    for key, value in raw.get("hydra", {}).get("launcher", {}).items():
        assert cfg.hydra.launcher[key] == value, key
    for key, value in raw.get("runtime", {}).items():  # launcher=packed: runtime.pack, on Hydra's basic launcher
        assert cfg.runtime[key] == value, key
    validate(cfg)


# ---------------------------------------------------------------- 2. presets keep their promised values


def test_resnet_cifar10_paper_preset(tmp_path):
    cfg = composed("experiment=resnet_cifar10_paper", "model.depth=56")
    assert cfg.model._target_ == "cnnlab.models.resnet.ResNet" and cfg.model.depth == 56
    assert list(cfg.scheduler.milestones) == [32000, 48000] and cfg.scheduler.unit == "step"
    assert cfg.scheduler.gamma == 0.1 and cfg.scheduler._target_.endswith(".multistep")
    assert cfg.trainer.max_steps == 64000 and cfg.trainer.epochs is None and cfg.trainer.batch_size == 128
    assert cfg.optimizer._target_ == "torch.optim.SGD" and cfg.optimizer.lr == 0.1
    assert cfg.optimizer.momentum == 0.9 and cfg.optimizer.weight_decay == pytest.approx(1e-4)
    assert cfg.scheduler.warmup_steps == 0
    assert cfg.dataset.name == "cifar10" and cfg.dataset.val_size == 5000
    assert cfg.dataset.augment.pad == 4 and cfg.dataset.augment.flip is True
    assert cfg.model.in_channels == 3
    validate(cfg)

    deep = composed("experiment=resnet_cifar10_paper", "model.depth=110")
    resolved = OmegaConf.to_container(deep, resolve=True)
    assert resolved["scheduler"]["warmup_steps"] == 400
    assert resolved["scheduler"]["warmup_mode"] == "constant" and resolved["scheduler"]["warmup_factor"] == 0.1
    factor = instantiate(deep.scheduler)(steps_per_epoch=352, total_steps=64000)
    assert [factor(s) for s in (0, 399, 400, 32000, 48000)] == pytest.approx([0.1, 0.1, 1.0, 0.1, 0.01])
    validate(deep)


def test_seed_lab_preset(tmp_path):
    cfg = composed("experiment=seed_lab")
    assert cfg.model._target_.endswith("ResNet")
    assert list(cfg.scheduler.milestones) == [50, 75] and cfg.scheduler.unit == "epoch"
    assert cfg.trainer.epochs == 85 and cfg.trainer.max_steps is None
    assert cfg.optimizer.lr == 0.1 and cfg.optimizer._target_ == "torch.optim.SGD"
    validate(cfg)


def test_mlp_mnist_preset(tmp_path):
    cfg = composed("experiment=mlp_mnist")
    assert cfg.model._target_.endswith("MLP") and list(cfg.model.hidden) == [512, 256]
    assert cfg.dataset.name == "mnist" and cfg.scheduler._target_.endswith(".cosine")
    assert cfg.optimizer.lr == 0.05 and cfg.trainer.epochs == 20 and cfg.trainer.batch_size == 128
    validate(cfg)


def test_canvas_classifier_preset(tmp_path):
    cfg = composed("experiment=canvas_classifier")
    assert cfg.model._target_.endswith("ResNet") and cfg.model.depth == 20
    assert cfg.dataset.name == "mnist_sample" and cfg.model.in_channels == 1
    assert cfg.dataset.augment.pad == 8 and cfg.dataset.augment.flip is False
    assert cfg.scheduler._target_.endswith(".cosine") and cfg.trainer.epochs == 10
    assert cfg.dataset.background == 0.25 and cfg.model.num_classes == 11  # the background class
    validate(cfg)


def test_degradation_grid_preset():
    cfg = compose_hydra("experiment=degradation_grid")
    params = {k: [v.strip() for v in str(p).split(",")] for k, p in cfg.hydra.sweeper.params.items()}
    assert params == {
        "model.depth": ["20", "32", "44", "56"],
        "model.residual": ["true", "false"],
        "seed": ["0", "1", "2"],
    }
    assert cfg.trainer.eval_test is True
    assert list(cfg.scheduler.milestones) == [32000, 48000] and cfg.trainer.max_steps == 64000  # on the paper recipe
    assert cfg.dataset.name == "cifar10"
    validate(cfg)


# ---------------------------------------------------------------- 3. every experiment preset runs


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_runs(tmp_path, experiment):
    overrides = [f"experiment={experiment}", "dataset=mnist_sample", "trainer.max_steps=2", "trainer.eval_every=1"]
    overrides += ["dataset.val_size=500", "runtime.figures=false", "runtime.eval_batch_size=2000"]  # fast evals
    if composed(f"experiment={experiment}").model._target_.endswith("ResNet"):
        overrides += TINY_RESNET
    else:
        overrides += ["model.hidden=[32]"]
    run_app(tmp_path, *overrides)
    result = metrics(tmp_path)
    assert result["steps"] == 2 and result["status"] == "completed"
    assert [row["step"] for row in history(tmp_path)] == [1, 2]
    assert 0 <= result["test_acc"] <= 1


# ---------------------------------------------------------------- 4. debug presets


def test_debug_fast(tmp_path):
    cfg = composed("debug=fast")
    assert OmegaConf.get_type(cfg.logger) is SCHEMAS["logger"]["none"]  # the logger default is wandb
    assert cfg.runtime.figures is False and cfg.trainer.max_steps == 5
    run = tmp_path / "run"
    run_app(run, "debug=fast")
    assert metrics(run)["steps"] == 5
    assert not (run / "figures").exists() and not (run / "wandb").exists()


def test_debug_overfit_learns_its_batch(tmp_path):
    cfg = composed("debug=overfit")
    assert cfg.trainer.overfit_batches == 1 and cfg.trainer.max_steps == 200 and cfg.trainer.epochs is None
    assert OmegaConf.get_type(cfg.logger) is SCHEMAS["logger"]["none"]
    run = tmp_path / "run"
    run_app(run, "debug=overfit")
    last = history(run)[-1]
    assert last["step"] == 200
    assert last["train_acc"] >= 0.95 and last["val_acc"] >= 0.95, last


def test_debug_profile_writes_a_trace(tmp_path):
    run_app(tmp_path, "debug=profile", "model.hidden=[32]")
    trace = tmp_path / "profile" / "trace.json"
    assert "traceEvents" in json.loads(trace.read_text())
    assert (tmp_path / "profile" / "summary.txt").read_text().strip()
    assert metrics(tmp_path)["steps"] == 12


# ---------------------------------------------------------------- 5, 6. the CLI: errors in one line, deprecated names

# (arguments, the key named, the fix suggested or None where it is not a plain default)
CLI_ERRORS = [
    ("trainer.batch_size=abc", "trainer.batch_size", "trainer.batch_size=128"),
    ("model=resnet model.depth=abc", "model.depth", "model.depth=20"),
    ("optimizer.lr=fast", "optimizer.lr", "optimizer.lr=0.1"),
    ("trainer.epochs=1.5", "trainer.epochs", "trainer.epochs=5"),
    ("model=resnet model.residual=maybe", "model.residual", "model.residual=true"),
    ("dataset.val_size=-3", "dataset.val_size", "dataset.val_size=1000"),
    ("trainer.precision=64", "trainer.precision", "trainer.precision=auto"),
    ("seed=abc", "seed", "seed=0"),
    ("trainer.no_such_key=1", "trainer.no_such_key", ""),
    ("task=localize task.threshold=2 checkpoint={tmp}/nowhere.pt", "task.threshold", "task.threshold=null"),
    ("task=localize task.canvas.size=abc", "task.canvas.size", "task.canvas.size=128"),
    ("model=resnet model.width=-16", "model.width", "model.width=16"),
    ("optimizer.momentum=2", "optimizer.momentum", "optimizer.momentum=0.9"),
    ("model=vgg", "model", ""),
    ("task=evaluate", "checkpoint", "checkpoint=outputs/<date>/<time>/checkpoints/best.pt"),  # required
    ("+trainer.foo=1", "trainer.foo", ""),
    # a key of another option of the group (the default model is mlp): not "unknown", and a fix that works
    ("model.depth=56", "model.depth", "model=resnet model.depth=56"),
    # a key inside a node set to null: OmegaConf fails with an AssertionError
    ("dataset.augment=null dataset.augment.pad=4", "dataset.augment.pad", None),
]
MULTIRUN = "-m model=resnet model.depth=20,21 trainer.max_steps=1"
DEPRECATED = "trainer.device=cpu trainer.max_steps=1 logger=none runtime.figures=false"


class CliRuns:
    """The CLI cases, each a fresh interpreter (2-7 s, mostly imports), run two at a time in the background."""

    def __init__(self, root: Path) -> None:
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.runs = {}
        for i, args in enumerate([DEPRECATED, MULTIRUN, *(c[0] for c in CLI_ERRORS)]):  # the longest first
            tmp = root / str(i)
            tmp.mkdir()
            where = f"hydra.sweep.dir={tmp / 'sweep'}" if args.startswith("-m") else f"hydra.run.dir={tmp / 'run'}"
            argv = [*shlex.split(args.format(tmp=tmp)), where]
            self.runs[args] = (tmp, self.pool.submit(cli, *argv, timeout=300))

    def __getitem__(self, args: str) -> tuple[Path, Any]:
        tmp, future = self.runs[args]
        return tmp, future.result()


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory) -> Iterator[CliRuns]:
    runs = CliRuns(tmp_path_factory.mktemp("cli"))
    yield runs
    runs.pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="module", autouse=True)
def start_cli_runs_early(request) -> None:
    """The in-process tests use one core: the CLI cases run meanwhile on the other (when any is selected)."""
    if any("cli_runs" in item.fixturenames for item in request.session.items if item.module is request.module):
        request.getfixturevalue("cli_runs")


def one_error_line(proc: Any) -> str:
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cnnlab: error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize(("args", "key", "fix"), CLI_ERRORS, ids=[c[0].split(" checkpoint")[0] for c in CLI_ERRORS])
def test_cli_config_error_is_one_line_with_exit_2(cli_runs, args, key, fix):
    tmp, proc = cli_runs[args]
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = one_error_line(proc)
    assert line.startswith(f"cnnlab: error: {key}="), line
    assert "is not allowed" in line
    if fix == "":  # nothing close enough to suggest: the allowed values only
        assert "Fix it" not in line
    else:
        assert "Fix it with the override `" in line
    if fix:
        assert f"Fix it with the override `{fix}`" in line
    assert not (tmp / "run" / "metrics.json").exists()
    assert not (tmp / "run").exists() or not any((tmp / "run").rglob("metrics.json"))


def test_cli_multirun_checks_the_whole_grid_first(cli_runs):
    tmp, proc = cli_runs[MULTIRUN]
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = one_error_line(proc)
    assert line.startswith("cnnlab: error: model.depth=21 is not allowed"), line
    assert "Fix it with the override `model.depth=20`" in line
    assert not (tmp / "sweep").exists() or not any(p.is_dir() for p in (tmp / "sweep").iterdir())


def test_cli_a_key_from_before_runtime_is_refused_with_its_new_home(cli_runs):
    """trainer.device (runtime.device since there is a runtime group) is refused, not rewritten."""
    tmp, proc = cli_runs[DEPRECATED]
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = one_error_line(proc)
    assert line.startswith("cnnlab: error: trainer.device='cpu' is not allowed"), line
    assert "Fix it with the override `runtime.device=cpu`" in line
    assert not (tmp / "run").exists()


# ---------------------------------------------------------------- 7. validate(): every range rule, the cross checks

# A value per type that each rule must refuse (the first candidate the field's type takes and its rule refuses).
BAD_CANDIDATES: list[Any] = [-1, 0, 2, 1.5, "nope", [-1], [0]]
# Options whose composed config holds each rule's field (nested dataclasses included).
RULE_CONFIGS = [
    ["model=mlp"],
    ["model=resnet"],
    ["dataset=cifar10"],
    ["optimizer=sgd"],
    ["optimizer=adam"],
    ["optimizer=adamw"],
    ["scheduler=none"],
    ["scheduler=multistep"],
    ["scheduler=cosine"],
    ["trainer=default"],
    ["runtime=default"],
    ["logger=wandb"],
    ["task=classify"],
    ["task=evaluate"],
    ["task=localize"],
    ["task=cam"],
]


def rule_fields(node: DictConfig, prefix: str) -> list[tuple[str, Any]]:
    """(dotted key, dataclass field) of every field with a range rule in a typed node, nested nodes included."""
    schema = OmegaConf.get_type(node)
    found = []
    for f in fields(schema):
        if f.name.startswith("_") or f.name not in node:
            continue
        value = node[f.name]
        if isinstance(value, DictConfig) and is_dataclass(OmegaConf.get_type(value)):
            found += rule_fields(value, f"{prefix}{f.name}.")
        elif "ok" in f.metadata:
            found.append((f"{prefix}{f.name}", f))
    return found


def schema_default(f: Any) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def set_bad_value(cfg: DictConfig, key: str, f: Any) -> Any:
    """Set the first candidate the field's type accepts and its rule refuses; return it as stored."""
    for candidate in BAD_CANDIDATES:
        trial = copy.deepcopy(cfg)
        try:
            OmegaConf.update(trial, key, candidate, merge=False)
        except Exception:  # the type refuses it: Hydra says that at composition
            continue
        stored = OmegaConf.select(trial, key)
        stored = OmegaConf.to_container(stored) if isinstance(stored, (DictConfig, ListConfig)) else stored
        if not f.metadata["ok"](stored):
            OmegaConf.update(cfg, key, candidate, merge=False)
            return stored
    raise AssertionError(f"no candidate value breaks the rule of {key}")


def all_rule_fields() -> set[tuple[str, str]]:
    """(schema, field) of every rule in every schema registered, nested schemas included."""
    found: set[tuple[str, str]] = set()

    def walk(schema: type) -> None:
        for f in fields(schema):
            nested = [t for t in (f.type, *get_args(f.type)) if is_dataclass(t)]  # e.g. Optional[AugmentConfig]
            for inner in nested:
                walk(inner)
            if not nested and "ok" in f.metadata:
                found.add((schema.__name__, f.name))

    for options in SCHEMAS.values():
        for schema in options.values():
            walk(schema)
    walk(Config)
    return found


def test_every_range_rule_fires_with_the_schema_default_as_fix():
    covered: set[tuple[str, str]] = set()
    for overrides in RULE_CONFIGS:
        base = composed(*overrides)
        validate(base)
        group = overrides[0].split("=")[0]
        rules = rule_fields(base[group], f"{group}.")
        assert rules, overrides
        for key, f in rules:
            assert f.metadata["ok"](schema_default(f)), f"the schema default of {key} breaks its own rule"
            cfg = copy.deepcopy(base)
            bad = set_bad_value(cfg, key, f)
            with pytest.raises(ConfigError) as caught:
                validate(cfg)
            error = caught.value
            assert error.key == key, (overrides, key, str(error))
            assert error.value == bad
            assert "is not allowed" in str(error)
            fix = f.metadata.get("fix", MISSING)
            expected = fix(bad) if callable(fix) else schema_default(f) if fix is MISSING else fix
            assert error.fix == f"{key}={yaml_text(expected)}", (key, error.fix)
            covered.add((OmegaConf.get_type(OmegaConf.select(base, key.rsplit(".", 1)[0])).__name__, f.name))
    assert all_rule_fields() <= covered, sorted(all_rule_fields() - covered)


@pytest.mark.parametrize(("depth", "fix"), [(7, 8), (21, 20), (100, 98), (0, 8)])
def test_depth_fix_is_the_nearest_6n_plus_2(depth, fix):
    cfg = composed("model=resnet")
    cfg.model.depth = depth
    with pytest.raises(ConfigError, match=rf"model.depth={depth} is not allowed: 6n\+2") as caught:
        validate(cfg)
    assert caught.value.fix == f"model.depth={fix}"


def test_unknown_key_added_with_plus_is_refused():
    cfg = composed("+trainer.foo=1")
    with pytest.raises(ConfigError, match="trainer has no key 'foo'") as caught:
        validate(cfg)
    assert caught.value.key == "trainer.foo"


@pytest.mark.parametrize(
    ("overrides", "key", "fix"),
    [
        (["trainer.epochs=null", "trainer.max_steps=null"], "trainer.epochs", "trainer.epochs=5"),
        (["task=cam", "task.source=test", "task.monitor=loc_acc"], "task.monitor", "task.monitor=null"),
        (["task=evaluate", "task.split=val", "task.monitor=test_acc"], "task.monitor", "task.monitor=null"),
    ],
)
def test_cross_checks_fire(overrides, key, fix):
    cfg = composed(*overrides)
    with pytest.raises(ConfigError, match="is not allowed") as caught:
        validate(cfg)
    assert (caught.value.key, caught.value.fix) == (key, fix)


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.epochs=null", "trainer.max_steps=10"],
        ["trainer.epochs=2", "trainer.max_steps=null"],
        ["task=cam", "task.source=test", "task.monitor=cls_acc"],
        ["task=cam", "task.source=canvas", "task.monitor=loc_acc"],
        ["task=evaluate", "task.split=val", "task.monitor=val_loss"],
        ["task=evaluate", "task.split=test", "task.monitor=test_acc"],
        ["task=evaluate", "task.split=val"],
    ],
)
def test_cross_checks_allow_the_consistent_settings(overrides):
    validate(composed(*overrides))


# ---------------------------------------------------------------- explain(): Hydra's composition errors, in-process


def composition_error(overrides: list[str]) -> ConfigError:
    """The ConfigError `python -m cnnlab <overrides>` prints for an override Hydra refuses while composing."""
    try:
        compose_config.__wrapped__(tuple(overrides), False)
    except Exception as e:  # what Hydra raises to cnnlab.__main__.main (HYDRA_FULL_ERROR=1)
        mapped = explain(e, overrides)
        assert mapped is not None, f"{type(e).__name__}: {e} would end in a traceback"
        return mapped
    raise AssertionError(f"{overrides} composed")


@pytest.mark.parametrize(
    ("overrides", "says", "fix"),
    [
        (["model.depth=56"], "model=mlp has no key 'depth'", "model=resnet model.depth=56"),
        (["experiment=seed_lab", "model.hidden=[5]"], "model=resnet has no", "model=mlp model.hidden=[5]"),
        (["optimizer=adam", "optimizer.momentum=0.9"], "of optimizer=sgd", "optimizer=sgd optimizer.momentum=0.9"),
        (["task.threshold=0.2"], "task=classify has no", "task=localize task.threshold=0.2"),
        (["scheduler.milestones=[10]"], "scheduler=none has no", "scheduler=multistep scheduler.milestones=[10]"),
        (["logger=none", "logger.mode=offline"], "logger=none has no", "logger=wandb logger.mode=offline"),
        (["logger=none", "logger.foo=1"], "logger has no keys", "logger=wandb"),
        (["trainer.batch_sise=64"], "trainer has no key", "trainer.batch_size=64"),
        (["dataset.augment=null", "dataset.augment.pad=4"], "augment: {pad: 4, flip: false, rotate: 0.0}", None),
        (["dataset.augment=null", "+dataset.augment.pad=4"], "augment: {pad: 4, flip: false, rotate: 0.0}", None),
        (["dataset=cifar10", "dataset.augment.pad=abc"], "an integer: 0 or more", "dataset.augment.pad=0"),
        (["dataset.augment=foo"], "{pad:0,flip:false,rotate:0.0} or null", "dataset.augment=null"),
    ],
)
def test_composition_errors_name_the_key_and_a_fix_that_is_not_the_same_override(overrides, says, fix):
    refused = overrides[-1].lstrip("+")
    error = composition_error(overrides)
    assert error.key == refused.split("=")[0] and says in str(error), str(error)
    assert error.fix != refused, "the fix repeats the refused override"
    assert str(error).count("a value of the right type") <= 1
    if fix is not None:
        assert error.fix == fix, str(error)


def test_augment_works_where_the_dataset_has_it():
    cfg = composed("dataset=cifar10", "dataset.augment.pad=2", "dataset.augment.flip=false")
    assert (cfg.dataset.augment.pad, cfg.dataset.augment.flip) == (2, False)
    for name in ("mnist", "mnist_sample", "fashion_mnist"):  # off by default, on from the command line
        assert composed(f"dataset={name}").dataset.augment == {"pad": 0, "flip": False, "rotate": 0.0}
        assert composed(f"dataset={name}", "dataset.augment.pad=4").dataset.augment.pad == 4
    assert composed("dataset=cifar10", "dataset.augment=null").dataset.augment is None


def test_multirun_check_accepts_a_key_of_swept_experiments():
    from cnnlab.sweeps.preflight import check_sweep

    # `python -m cnnlab -m experiment=seed_lab,canvas_classifier model.depth=8,14`: both experiments are ResNets
    cfg = compose_hydra()
    cfg.hydra.overrides.task = ["experiment=seed_lab,canvas_classifier", "model.depth=8,14"]
    check_sweep(cfg)


def test_multirun_check_refuses_a_bad_value_of_the_grid():
    from cnnlab.sweeps.preflight import check_sweep

    cfg = compose_hydra("model=resnet")
    cfg.hydra.overrides.task = ["model=resnet", "model.depth=20,21"]
    with pytest.raises(ConfigError, match=r"model.depth=21 is not allowed") as caught:
        check_sweep(cfg)
    assert caught.value.fix == "model.depth=20"


def test_multirun_check_reads_the_values_not_their_escaped_forms():
    from cnnlab.sweeps.preflight import check_sweep

    # Hydra escapes ':' in a sweep's strings (pgc\:HiResCAM): the check must see the value a job gets
    cfg = compose_hydra("task=cam", "checkpoint=best.pt")
    cfg.hydra.overrides.task = ["task=cam", "checkpoint=best.pt", "task.method=cam,pgc:HiResCAM,ink"]
    check_sweep(cfg)
    cfg.hydra.overrides.task = ["task=cam", "checkpoint=best.pt", "task.method=cam,pgc-HiResCAM"]
    with pytest.raises(ConfigError, match=r"task.method='pgc-HiResCAM' is not allowed"):
        check_sweep(cfg)
