"""Config schemas: one dataclass per config group option, registered with Hydra's ConfigStore.

Every YAML option under conf/ starts from its schema (`defaults: [/schema_<group>_<option>@_here_, _self_]`),
so Hydra refuses a wrong type or an unknown key while it composes. Ranges live next to the types, as field
metadata (`rule`), and `validate` checks all of them in one place; cnnlab.config.messages turns Hydra's
composition errors into cnnlab's one-line ConfigError. Library code (models, data, training) raises plain
ValueErrors; the boundary (cnnlab.tasks.build) names the config key.
"""

import re
from collections.abc import Callable, Iterator
from dataclasses import MISSING, dataclass, field, is_dataclass
from typing import Any, List, Optional, get_args  # noqa: UP035  (OmegaConf 2.3 reads typing generics, not int | None)

from omegaconf import DictConfig, OmegaConf

from cnnlab.errors import ConfigError

Check = Callable[[Any], bool]


def rule(default: Any, allowed: str | Callable[[Any], str], ok: Check, fix: Any = MISSING) -> Any:
    """A schema field with its range: `ok(value)` says whether a value is allowed, `allowed` says what is."""
    meta = {"allowed": allowed, "ok": ok, "fix": fix}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def one_of(*values: Any) -> tuple[str, Check]:
    names = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
    text = ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]
    return text, lambda v: v in values


POSITIVE = ("a positive integer", lambda v: v > 0)
POSITIVE_OR_NULL = ("a positive integer or null", lambda v: v is None or v > 0)
NON_NEGATIVE = ("0 or more", lambda v: v >= 0)
FRACTION = ("a fraction in (0, 1]", lambda v: 0 < v <= 1)
PROBABILITY = ("a number in [0, 1)", lambda v: 0 <= v < 1)
POSITIVE_NUMBER = ("a positive number", lambda v: v > 0)


def depth_allowed(depth: Any) -> str:
    return f"6n+2 with n >= 1 (20, 32, 44, 56, 110, ...); nearest: {nearest_depths(depth)}"


def nearest_depths(depth: Any) -> list[int]:
    guess = depth if isinstance(depth, (int, float)) and not isinstance(depth, bool) else 20
    n = max(1, round((guess - 2) / 6))
    return sorted({6 * k + 2 for k in (n - 1, n, n + 1) if k >= 1})


def _nearest_depth(depth: Any) -> int:
    guess = depth if isinstance(depth, (int, float)) and not isinstance(depth, bool) else 20
    return min(nearest_depths(depth), key=lambda d: abs(d - guess))


# ---------------------------------------------------------------- model


@dataclass
class MLPConfig:
    _target_: str = "cnnlab.models.mlp.MLP"
    in_shape: List[int] = rule(
        [1, 28, 28], "[channels, height, width], all positive", lambda v: len(v) == 3 and min(v) > 0
    )
    num_classes: int = rule(10, "2 or more classes", lambda v: v >= 2)
    hidden: List[int] = rule([512, 256], "a list of positive layer sizes", lambda v: all(h > 0 for h in v))
    activation: str = rule("relu", *one_of("relu", "gelu", "tanh", "sigmoid"))
    dropout: float = rule(0.0, *PROBABILITY)


@dataclass
class ResNetConfig:
    _target_: str = "cnnlab.models.resnet.ResNet"
    depth: int = rule(20, depth_allowed, lambda v: v >= 8 and (v - 2) % 6 == 0, fix=_nearest_depth)
    width: int = rule(16, "a positive integer (16 in the paper)", lambda v: v > 0)
    residual: bool = True
    shortcut: str = rule("A", *one_of("A", "B", "C"))
    batch_norm: bool = True
    in_channels: int = rule(3, "a positive number of input channels (the dataset's: dataset.shape.0)", lambda v: v > 0)
    num_classes: int = rule(10, "2 or more classes", lambda v: v >= 2)


# ---------------------------------------------------------------- dataset


@dataclass
class AugmentConfig:
    pad: int = rule(0, *NON_NEGATIVE)
    flip: bool = False
    # a random rotation of each image by up to this many degrees either way (digits: ~10); 0: none
    rotate: float = rule(0.0, "0 to 180 degrees", lambda v: 0 <= v <= 180)


@dataclass
class DatasetConfig:
    name: str = rule("mnist_sample", *one_of("mnist_sample", "mnist", "fashion_mnist", "cifar10"))
    root: Optional[str] = None
    download: bool = False
    shape: List[int] = field(default_factory=lambda: [1, 28, 28])
    num_classes: int = 10
    classes: Optional[List[str]] = None  # class names for figures; null: the class numbers
    mean: List[float] = field(default_factory=lambda: [0.5])
    std: List[float] = rule([0.5], "positive numbers", lambda v: all(s > 0 for s in v))
    val_size: int = rule(1000, "a positive number of training images to hold out", lambda v: v > 0)
    augment: Optional[AugmentConfig] = None
    # > 0: an extra class, background (the last index), of this many patches per training image: OverFeat's
    # background class, which lets a classifier made fully convolutional tell a digit from ink and empty canvas
    background: float = rule(0.0, "0 (no background class) or a positive fraction such as 0.25", lambda v: v >= 0)
    # with a background class: this many extra digits per training image shown as a box's crop on a canvas shows
    # them (a neighbour's edge or fragments at the border), each labelled by its own digit
    context: float = rule(0.0, "0 (none) or a positive fraction such as 0.5", lambda v: v >= 0)

    @staticmethod
    def cross_checks(node: DictConfig) -> Iterator[ConfigError]:
        channels = node.shape[0] if len(node.shape) == 3 else None
        for key in ("mean", "std"):
            if channels is not None and len(node[key]) != channels:
                shown = "[" + ",".join(["0.5"] * channels) + "]"
                yield ConfigError(f"dataset.{key}", list(node[key]), f"one value per channel: {channels} for "
                                  f"dataset.shape={list(node.shape)}", f"dataset.{key}={shown}")  # fmt: skip
        if node.get("background", 0) and node.name not in ("mnist_sample", "mnist", "fashion_mnist"):
            yield ConfigError(
                "dataset.background",
                node.background,
                "0 for this dataset: the background class is made of canvas patches, for the MNIST family",
                "dataset.background=0",
            )
        if node.get("context", 0) and not node.get("background", 0):
            yield ConfigError("dataset.context", node.context, "0 without a background class (dataset.background > 0, "
                              "the MNIST family, allows more)", "dataset.context=0")  # fmt: skip


# ---------------------------------------------------------------- optimizer


@dataclass
class AdamConfig:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = rule(1e-3, *POSITIVE_NUMBER)
    weight_decay: float = rule(0.0, *NON_NEGATIVE)


@dataclass
class AdamWConfig(AdamConfig):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = rule(0.05, *NON_NEGATIVE)


@dataclass
class SGDConfig:
    _target_: str = "torch.optim.SGD"
    _partial_: bool = True
    lr: float = rule(0.1, *POSITIVE_NUMBER)
    momentum: float = rule(0.9, *PROBABILITY)
    weight_decay: float = rule(1e-4, *NON_NEGATIVE)
    nesterov: bool = False


# ---------------------------------------------------------------- scheduler


@dataclass
class ConstantConfig:
    _target_: str = "cnnlab.training.scheduler.constant"
    _partial_: bool = True
    warmup_steps: int = rule(0, *NON_NEGATIVE)
    warmup_factor: float = rule(0.1, *FRACTION)
    warmup_mode: str = rule("linear", *one_of("linear", "constant"))


@dataclass
class MultiStepConfig(ConstantConfig):
    _target_: str = "cnnlab.training.scheduler.multistep"
    milestones: List[int] = rule([50, 75], "a list of positive steps or epochs", lambda v: all(m > 0 for m in v))
    gamma: float = rule(0.1, *POSITIVE_NUMBER)
    unit: str = rule("epoch", *one_of("epoch", "step"))


@dataclass
class CosineConfig(ConstantConfig):
    _target_: str = "cnnlab.training.scheduler.cosine"
    min_factor: float = rule(0.0, "a number in [0, 1]", lambda v: 0 <= v <= 1)


# ---------------------------------------------------------------- trainer and runtime


@dataclass
class TrainerConfig:
    """What defines a result: how long, in which batches, at which precision, evaluated when."""

    epochs: Optional[int] = rule(5, "0 or more, or null to stop by trainer.max_steps", lambda v: v is None or v >= 0)
    max_steps: Optional[int] = rule(None, *POSITIVE_OR_NULL)
    batch_size: int = rule(128, *POSITIVE)
    eval_every: Optional[int] = rule(None, *POSITIVE_OR_NULL)
    eval_test: bool = False
    overfit_batches: int = rule(0, *NON_NEGATIVE)
    precision: str = rule("auto", *one_of("auto", "32", "bf16", "16"))
    drop_last: bool = False  # drop each epoch's partial last batch (the YAML ties it to runtime.compile)
    tf32: bool = True  # on CUDA, fp32 matmuls and convolutions may use TF32 (only precision 32 computes in fp32)

    @staticmethod
    def cross_checks(node: DictConfig) -> Iterator[ConfigError]:
        if node.epochs is None and node.max_steps is None:
            yield ConfigError(
                "trainer.epochs", None, "a number of epochs, or set trainer.max_steps", "trainer.epochs=5"
            )


DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class RuntimeConfig:
    """How this machine runs it: may change on resume without changing the result."""

    device: str = rule("auto", "auto, cpu, cuda or cuda:N", lambda v: bool(DEVICE.match(v)))
    threads: Optional[int] = rule(None, *POSITIVE_OR_NULL)
    resume: Optional[str] = None
    log_every: int = rule(50, *POSITIVE)
    eval_batch_size: int = rule(1000, *POSITIVE)
    channels_last: Any = rule("auto", *one_of("auto", True, False))
    compile: bool = False
    checkpoint: bool = True
    checkpoint_every: Optional[int] = rule(None, *POSITIVE_OR_NULL)
    figures: bool = True
    profile: bool = False  # a torch.profiler trace of the first steps in <run dir>/profile/
    print_config: bool = False  # the whole composed config as a tree at the start (else one line of the choices)
    # a multirun's jobs that differ only in seed, trained this many at a time as one module (launcher=packed: 8);
    # 1: every job alone
    pack: int = rule(1, *POSITIVE)
    # a pack's layers member by member, so each member is its lone run bit for bit on the CPU (true); false: one
    # grouped convolution for all members (fewer, larger kernels, for a GPU: members then agree with their lone
    # runs only up to the order of float sums, which chaotic training grows to percents)
    pack_exact: bool = True


# ---------------------------------------------------------------- logger and paths


@dataclass
class NullLoggerConfig:
    _target_: str = "cnnlab.records.tracking.NullLogger"


@dataclass
class WatchConfig:
    log: Optional[str] = rule(None, *one_of(None, "gradients", "parameters", "all"))
    freq: int = rule(100, *POSITIVE)


@dataclass
class WandbLoggerConfig:
    _target_: str = "cnnlab.records.tracking.WandbLogger"
    mode: str = rule("offline", *one_of("offline", "online", "disabled"))
    project: str = "cnnlab"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    name: Optional[str] = None
    watch: WatchConfig = field(default_factory=WatchConfig)
    log_checkpoints: bool = True


@dataclass
class PathsConfig:
    data_dir: str = "data"
    output_dir: str = "outputs"


# ---------------------------------------------------------------- tasks

CANVAS_METRICS = ("cls_acc", "loc_acc", "mean_iou", "center_err_px", "pointing_acc", "box_precision", "canvases")
# task.method: cnnlab's class-map methods and baselines (cnnlab.vision.METHODS, kept equal by a test), or
# pgc:<Name> for a method of pytorch-grad-cam (the `cam` extra)
MAP_METHODS = ("fully-conv", "cam", "grad-cam", "grad-cam++", "xgrad-cam", "layer-cam", "score-cam")
MAP_BASELINES = ("random", "center", "ink")
METHOD_ALLOWED = (
    f"one of {', '.join(MAP_METHODS)}; the baselines {', '.join(MAP_BASELINES)}; or pgc:<Name> for a method of "
    'pytorch-grad-cam (e.g. pgc:ScoreCAM, pgc:HiResCAM; pip install -e ".[cam]")'
)


def _method_ok(value: Any) -> bool:
    return value in MAP_METHODS + MAP_BASELINES or bool(re.fullmatch(r"pgc:[A-Za-z_][A-Za-z0-9_]*", str(value)))


def task_name(name: str) -> Any:
    """A task's name: its own, fixed (the task is chosen by the group, task=<name>)."""
    return rule(name, f"{name}: the task is chosen with task=<name>", lambda v: v == name, fix=name)


@dataclass
class ClassifyConfig:
    name: str = task_name("classify")
    monitor: str = rule("val_acc", *one_of("val_acc", "val_loss"))


@dataclass
class EvaluateConfig:
    name: str = task_name("evaluate")
    split: str = rule("test", *one_of("test", "val"))
    monitor: Optional[str] = None  # null: <split>_acc

    @staticmethod
    def cross_checks(node: DictConfig) -> Iterator[ConfigError]:
        allowed = (f"{node.split}_acc", f"{node.split}_loss")
        if node.monitor is not None and node.monitor not in allowed:
            yield ConfigError("task.monitor", node.monitor, f"null, {allowed[0]} or {allowed[1]}", "task.monitor=null")


@dataclass
class CanvasConfig:
    count: int = rule(500, *POSITIVE)
    size: int = rule(128, "an integer of at least the digit size", lambda v: v > 0)
    digits: int = rule(1, *POSITIVE)
    clutter: int = rule(0, *NON_NEGATIVE)
    fragment: int = rule(8, "a side length from 1 to the digit size", lambda v: v > 0)
    seed: int = 0
    # test: digits the classifier never saw (report these); val: its validation split, to tune thresholds on
    split: str = rule("test", *one_of("test", "val"))


@dataclass
class CanvasKind:
    """One kind of canvas of task.kinds: what differs from task.canvas (null: task.canvas's value)."""

    digits: Optional[int] = None
    clutter: Optional[int] = None
    count: Optional[int] = None


CANVAS_KINDS = (CanvasKind(), CanvasKind(clutter=8), CanvasKind(digits=3))  # single, clutter8, 3digits


@dataclass
class LocalizeConfig:
    name: str = task_name("localize")
    monitor: str = rule("loc_acc", *one_of(*CANVAS_METRICS))
    canvas: CanvasConfig = field(default_factory=CanvasConfig)
    # canvas kinds in one run, each what differs from task.canvas (metrics <kind>/<key>); null: task.canvas alone,
    # as is a command line that sets task.canvas.count, .digits or .clutter (cnnlab.tasks.build.canvas_kinds)
    kinds: Optional[List[CanvasKind]] = field(default_factory=lambda: [*CANVAS_KINDS])
    # ink: the map chooses the ink components of its class and the box is theirs; map: the map's region's box
    boxes: str = rule("ink", *one_of("ink", "map"))
    # crop: each box's class is the classifier's on the digit-sized crop centred on it; map: the class whose map
    # drew the box (the canvas's pooled class)
    box_labels: str = rule("crop", *one_of("crop", "map"))
    pooling: str = rule("window", *one_of("window", "topk", "max", "mean"))
    cell_center: str = rule("middle", *one_of("middle", "field"))
    window: int = rule(7, *POSITIVE)  # cells: 7 x stride 4 = 28 px, a digit (measured on val canvases)
    topk: int = rule(16, *POSITIVE)
    threshold: Optional[float] = rule(  # box = components above this fraction of the map's maximum
        None,
        "null (the method's own box threshold) or a fraction in (0, 1]",
        lambda v: v is None or 0 < v <= 1,
    )
    iou: float = rule(0.5, *FRACTION)
    batch_size: int = rule(50, *POSITIVE)
    figure_count: int = rule(16, *POSITIVE)
    method: str = rule("fully-conv", METHOD_ALLOWED, _method_ok)
    # null (the method's default, the last maps) or a layer name (stem, stage2, stage3.0, stage2.0.bn2, ...):
    # checked against the model's own layers once the checkpoint is read
    layer: Optional[str] = None
    faithfulness: bool = True  # deletion/insertion AUC, Average Drop, Increase in Confidence (vision.faithfulness)
    faithfulness_count: int = rule(200, *POSITIVE)  # the first images scored: each costs 2 (steps + 1) passes
    faithfulness_steps: int = rule(8, *POSITIVE)
    sanity: bool = True  # model-randomization check (vision.sanity)
    sanity_count: int = rule(32, *POSITIVE)  # images whose maps are compared


@dataclass
class CamConfig(LocalizeConfig):
    name: str = task_name("cam")
    monitor: Optional[str] = None  # null: loc_acc on canvases, cls_acc with source=test
    source: str = rule("canvas", *one_of("canvas", "test"))
    count: Optional[int] = rule(1000, "a positive number of test images, or null for all", lambda v: v is None or v > 0)
    # a PNG/JPEG file or a folder of them: their maps, classes and probabilities (predictions.csv) instead
    images: Optional[str] = None
    method: str = rule("cam", METHOD_ALLOWED, _method_ok)
    class_index: Optional[int] = rule(
        None, "null (the predicted class) or a class number", lambda v: v is None or v >= 0
    )

    @staticmethod
    def cross_checks(node: DictConfig) -> Iterator[ConfigError]:
        allowed = CANVAS_METRICS if node.source == "canvas" else ("cls_acc", "images")
        if node.monitor is not None and node.monitor not in allowed:
            yield ConfigError(
                "task.monitor",
                node.monitor,
                f"null or one of {', '.join(allowed)} with source={node.source}",
                "task.monitor=null",
            )


@dataclass
class Config:
    """The root: one seed drives everything; checkpoint names the trained model of evaluate, localize and cam."""

    seed: int = 0
    checkpoint: Optional[str] = None  # required by evaluate, localize and cam

    @staticmethod
    def cross_checks(node: DictConfig) -> Iterator[ConfigError]:
        task = node.get("task")
        if isinstance(task, DictConfig) and task.get("name") in ("evaluate", "localize", "cam") and not node.checkpoint:
            yield ConfigError(
                "checkpoint",
                None,
                f"a checkpoint path or wandb:<entity>/<project>/<artifact>:<alias> for task={task.name}",
                "checkpoint=outputs/<date>/<time>/checkpoints/best.pt",
            )

    task: Any = "???"  # a config group
    model: Any = "???"  # a config group
    dataset: Any = "???"  # a config group
    optimizer: Any = "???"  # a config group
    scheduler: Any = "???"  # a config group
    trainer: Any = "???"  # a config group
    runtime: Any = "???"  # a config group
    logger: Any = "???"  # a config group
    paths: Any = "???"  # a config group


SCHEMAS: dict[str, dict[str, type]] = {
    "model": {"mlp": MLPConfig, "resnet": ResNetConfig},
    "dataset": {"dataset": DatasetConfig},
    "optimizer": {"sgd": SGDConfig, "adam": AdamConfig, "adamw": AdamWConfig},
    "scheduler": {"none": ConstantConfig, "multistep": MultiStepConfig, "cosine": CosineConfig},
    "trainer": {"default": TrainerConfig},
    "runtime": {"default": RuntimeConfig},
    "logger": {"none": NullLoggerConfig, "wandb": WandbLoggerConfig},
    "paths": {"default": PathsConfig},
    "task": {"classify": ClassifyConfig, "evaluate": EvaluateConfig, "localize": LocalizeConfig, "cam": CamConfig},
}
GROUPS = tuple(SCHEMAS)

# How and where this machine runs a job, not what it computes: resume lets these change, the report does not
# group runs by them.
NOT_THE_RESULT = (
    *("runtime", "logger", "paths", "launcher", "hydra"),
    *("dataset.root", "dataset.download", "dataset.classes", "checkpoint"),
)


def defines_result(key: str) -> bool:
    """Whether a dotted config key is part of what a run computes (model, data, optimizer, steps, ...)."""
    return not any(key == k or key.startswith(k + ".") for k in NOT_THE_RESULT)


def option_of(group: str, node: Any) -> str | None:
    """The option of `group` whose schema types `node` (a composed node, or the schema class itself)."""
    schema = node if isinstance(node, type) else OmegaConf.get_type(node)
    return next((option for option, s in SCHEMAS.get(group, {}).items() if s is schema), None)


def paper_warmup(depth: int) -> int:
    """He et al. warm ResNet-110 up at lr 0.01 for about 400 iterations; shallower nets need none."""
    return 400 if int(depth) >= 110 else 0


def outputs(num_classes: int, background: float) -> int:
    """The model's outputs: the dataset's classes, plus one for the background class when there is one."""
    return int(num_classes) + (1 if float(background) > 0 else 0)


def register() -> None:
    """Store every schema as schema_<group>_<option> and the root as config_schema; register our resolvers.

    Called before Hydra composes (the app, `cnnlab sweep`, the tests)."""
    from hydra.core.config_store import ConfigStore

    if not OmegaConf.has_resolver("cnnlab.paper_warmup"):
        OmegaConf.register_new_resolver("cnnlab.paper_warmup", paper_warmup)
    if not OmegaConf.has_resolver("cnnlab.outputs"):
        OmegaConf.register_new_resolver("cnnlab.outputs", outputs)
    store = ConfigStore.instance()
    store.store(name="config_schema", node=Config)
    for group, options in SCHEMAS.items():
        for name, schema in options.items():
            store.store(name=f"schema_{group}_{name}", node=schema)  # not a group: --help lists only the real ones


def dataclass_in(annotation: Any) -> type | None:
    """The schema of a nested node: the annotation itself or the T of Optional[T] (dataset.augment)."""
    return next((t for t in (annotation, *get_args(annotation)) if isinstance(t, type) and is_dataclass(t)), None)
