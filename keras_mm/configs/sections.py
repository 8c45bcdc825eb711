"""The sections of a run config as dataclasses: each field's default, its help text (which
`keras-mm COMMAND --help` and the docs print) and its checks.

    config = RunConfig.from_dict(keras_mm.configs.get_config("digits"))  # checked
    config.distill.num_steps, config.data.image_shape
    config.to_dict()  # what config.json holds
"""

import dataclasses
import typing

from keras_mm.configs.errors import ConfigError
from keras_mm.metrics.extractors import FEATURE_EXTRACTORS

# The paper's distillation optimizer (Appendix B); `distill.adam`.
PAPER_ADAM = {"beta_1": 0.0, "beta_2": 0.99, "epsilon": 1e-12, "global_clipnorm": 1.0}


def option(default, help, choices=None, minimum=None):
    """A config field: its default, help text, allowed values and lower bound."""
    factory = (lambda: type(default)(default)) if isinstance(default, (dict, list)) else None
    metadata = {"help": help, "choices": choices, "minimum": minimum}
    if factory:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Section:
    """Checks every field against its type, choices and minimum after construction."""

    section: typing.ClassVar[str] = ""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for field in dataclasses.fields(self):
            check_value(f"{self.section}.{field.name}", getattr(self, field.name),
                        hints[field.name], field.metadata)

    @classmethod
    def from_dict(cls, values):
        if not isinstance(values, dict):
            raise ConfigError(f"Config section '{cls.section}' must be a JSON object; got "
                              f"{values!r}.")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"Unknown config key '{cls.section}.{unknown[0]}'; the keys of "
                              f"'{cls.section}' are {sorted(known)}. See `keras-mm "
                              "train-teacher --help` for what each one means.")
        return cls(**values)


def check_value(key, value, hint, metadata):
    """One line naming `key`, the value and what is expected, if `value` does not fit."""
    optional = type(None) in typing.get_args(hint)
    base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
    base = typing.get_origin(base) or base
    if value is None:
        if not optional:
            raise ConfigError(f"{key} must not be null; set it, e.g. --set {key}=...")
        return
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return check_range(key, value, metadata)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {describe_type(base, optional)}; got {value!r}.")
    choices = metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, choices))}; got "
                          f"{value!r}.")
    check_range(key, value, metadata)


def check_range(key, value, metadata):
    minimum = metadata.get("minimum")
    if minimum is not None and isinstance(value, (int, float)) and value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}; got {value!r}.")


def describe_type(base, optional):
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             list: "a JSON list", dict: "a JSON object"}
    return names.get(base, base.__name__) + (" or null" if optional else "")


@dataclasses.dataclass
class DataConfig(Section):
    section: typing.ClassVar[str] = "data"
    source: str = option("digits", '"digits" (scikit-learn\'s 8x8 digits, bundled), "tfds" '
                         '(tfds.load), "captions" (text-image pairs), or your own images: '
                         '"image_folder" or "npz" (from data.path); "prompts" (model.network "sd3": '
                         "data-free, the teacher's own samples for the prompts of data.path)",
                         choices=("digits", "tfds", "captions", "image_folder", "npz",
                                  "prompts"))
    path: str | None = option(
        None, '"image_folder": a folder of images, one subfolder per class (labels in '
        'sorted-name order) or the images directly in it (unconditional); "npz": a file '
        "with an array `images` ([0, 255] or [-1, 1]) and optionally `labels`. Images are "
        "resized and center-cropped to data.image_shape; \"prompts\": a text file of "
        "prompts, one per line (null: keras_mm.training.sd3.DEFAULT_PROMPTS); model.network "
        '"sd3" with "image_folder": captioned images, a folder with a metadata.jsonl of '
        '{"file_name", "text"} lines (keras_mm.datasets.load_captioned_folder)')
    name: str | None = option(
        None, "TFDS dataset name, e.g. cifar10, imagenet_resized/64x64, imagenet2012; "
        'captions: "shapes" (keras_mm.datasets.make_captioned_shapes, bundled) or a TFDS '
        "dataset with an image and a caption feature, e.g. coco_captions")
    split: str = option("train", "TFDS split to train on")
    image_shape: list = option([8, 8, 1], "[height, width, channels] of the training images "  # noqa: RUF009
                               "and of the network (stated here only; TFDS and folder images "
                               "are center-cropped to a square and resized)")
    num_classes: int | None = option(
        10, "number of classes (labels condition the model, stated here only), or null",
        minimum=1)
    random_flip: bool = option(True, "flip training images left-right at random (TFDS)")
    data_dir: str | None = option(
        None, "TFDS data directory (null: TFDS's default, ~/tensorflow_datasets)")
    shuffle_buffer: int = option(10_000, "examples in the tf.data shuffle buffer", minimum=1)
    text_encoder: str | None = option(
        None, "captions: KerasHub T5 preset encoding the captions (e.g. t5_1.1_xxl, from "
        "Kaggle) or a local preset directory; its hidden_dim must equal model.uvit.text_dim. "
        "Each distinct caption is encoded once and cached in RUN_DIR/caption_embeddings.npz")
    sequence_length: int = option(128, "captions: caption tokens kept (padded or truncated)",
                                  minimum=1)
    num_examples: int | None = option(
        None, 'captions: examples drawn ("shapes") or read from the start of the TFDS split '
        'into memory (null: all of it); "prompts": teacher samples generated once (cycling '
        "through the prompts; eval.teacher_num_steps steps at distill.teacher_guidance_scale) "
        "and cached in RUN_DIR/teacher_samples.npz (null: one per prompt)", minimum=1)
    image_feature: str = option("image", "captions, TFDS: the image feature")
    caption_feature: str = option(
        "caption", "captions, TFDS: the caption feature; a/b for nested features "
        "(coco_captions: captions/text), the first caption of a list")

    def __post_init__(self):
        super().__post_init__()
        shape = self.image_shape
        if len(shape) != 3 or not all(isinstance(d, int) and d >= 1 for d in shape):
            raise ConfigError(f"data.image_shape must be [height, width, channels] of "
                              f"positive integers, e.g. [32, 32, 3]; got {shape!r}.")


@dataclasses.dataclass
class ModelConfig(Section):
    section: typing.ClassVar[str] = "model"
    network: str = option(
        "uvit", '"uvit" (a UViT teacher that train-teacher trains) or "sd3" (KerasHub\'s '
        "Stable Diffusion 3 as the teacher, from model.sd3_preset; distill only)",
        choices=("uvit", "sd3"))
    sd3_preset: str | None = option(
        None, 'network "sd3": a KerasHub StableDiffusion3Backbone preset (e.g. '
        '"stable_diffusion_3_medium", downloaded from Kaggle) or a local preset directory; '
        "null: a randomly initialised tiny backbone (keras_mm.models.sd3.tiny_sd3_backbone), "
        "kept in RUN_DIR/sd3_backbone")
    uvit_preset: str | None = option(
        "uvit_digits", "UViT preset (keras_mm.models.uvit_presets), or null to build from "
        "model.uvit alone")
    uvit: dict = option({}, 'UViT constructor arguments overriding the preset, e.g. '  # noqa: RUF009
                        '{"base_channels": 64} (image_shape and num_classes come from data)')
    prediction_type: str = option("v", 'what the network predicts: "v", "eps" or "x"',
                                  choices=("v", "eps", "x"))
    loss_weighting: str = option("v", 'teacher loss weight: "v" (SNR + 1), "edm" or "flat"',
                                 choices=("v", "edm", "flat"))
    condition_dropout: float = option(0.1, "probability of dropping the label during teacher "
                                      "training (classifier-free guidance)", minimum=0.0)

    def __post_init__(self):
        super().__post_init__()
        for key in ("image_shape", "num_classes"):
            if key in self.uvit:
                raise ConfigError(f"model.uvit.{key} is data.{key}, stated once: drop "
                                  f"model.uvit.{key} and set data.{key}.")
        for key, value in self.uvit.items():
            check_uvit_value(key, value)


# The types of UViT's arguments (keras_mm.models.uvit.UViT), checked here so that a bad
# --set names its key: "int" (None allowed where UViT's default is None), "ints" a list of
# them, "number" a float. Keys not listed are left to UViT itself.
UVIT_TYPES = {"base_channels": "int", "transformer_depth": "int", "num_heads": "int",
              "dropout_from_level": "int", "mlp_ratio": "int", "norm_groups": "int",
              "patch_size": "int", "embedding_dim": "int?", "output_channels": "int?",
              "text_dim": "int?", "text_length": "int?", "channel_multipliers": "ints",
              "num_res_blocks": "int or ints", "dropout": "number"}


def check_uvit_value(key, value):
    """A ConfigError naming `model.uvit.<key>` unless `value` has UViT's type for it."""
    kind = UVIT_TYPES.get(key)
    if kind is None:
        return

    def is_int(x):
        return isinstance(x, int) and not isinstance(x, bool)

    def is_ints(x):
        return isinstance(x, list) and bool(x) and all(is_int(v) for v in x)

    valid = {"int": is_int(value), "int?": value is None or is_int(value),
             "ints": is_ints(value), "int or ints": is_int(value) or is_ints(value),
             "number": isinstance(value, (int, float)) and not isinstance(value, bool)}[kind]
    if not valid:
        expected, example = {
            "int": ("an integer", "64"), "int?": ("an integer or null", "64"),
            "ints": ("a list of integers", "[1,2]"),
            "int or ints": ("an integer or a list of integers", "2"),
            "number": ("a number", "0.1")}[kind]
        raise ConfigError(f"model.uvit.{key} must be {expected} (e.g. --set "
                          f"model.uvit.{key}={example}); got {value!r}.")


@dataclasses.dataclass
class TeacherConfig(Section):
    section: typing.ClassVar[str] = "teacher"
    batch_size: int = option(2048, "teacher training batch size", minimum=1)
    steps: int = option(1_000_000, "teacher training steps", minimum=1)
    learning_rate: float = option(1e-4, "teacher Adam learning rate after warmup (constant)",
                                  minimum=0.0)
    warmup_steps: int = option(1000, "linear learning-rate warmup of the teacher", minimum=0)
    checkpoint_every: int = option(1000, "steps between checkpoints (atomic, in RUN_DIR/backup; "
                                   "docs/reliability.md), CSV/TensorBoard rows and "
                                   "progress-bar epochs; divides teacher.steps", minimum=1)
    sample_every: int = option(10_000, "steps between sample grids (a multiple of "
                               "checkpoint_every; 0: none)", minimum=0)
    seed: int = option(0, "seed of the teacher's initialisation, noise and data order")


@dataclasses.dataclass
class DistillConfig(Section):
    section: typing.ClassVar[str] = "distill"
    num_steps: int = option(8, "k, the student's sampling steps", minimum=1)
    method: str = option("alternating", '"alternating" (Algorithm 2) or "instant" '
                         "(Algorithm 3)", choices=("alternating", "instant"))
    lora_rank: int | None = option(
        None, "generator and auxiliary as trainable rank-r deltas on the teacher's own weights, "
        "held once (null: full copies of the teacher; 16 is a good start)", minimum=1)
    remat: bool = option(False, "recompute each layer's activations in the backward pass "
                         "(less memory per example, one more forward pass)")
    time_sampler: str = option("edm", 'p(s): "edm" (the paper) or "uniform"',
                               choices=("edm", "uniform"))
    weighting: str = option("auto", 'w(s): "auto" (alternating: flat for k <= 2, else EDM; '
                            'instant: flat), "edm", "flat" or "dmd"',
                            choices=("auto", "edm", "flat", "dmd"))
    conditional_sampling: bool = option(True, "z_s ~ q(z_s | z_t, x~) (true, the paper) or "
                                        "q(z_s | x~)")
    teacher_guidance_scale: float = option(0.0, "classifier-free guidance of the teacher "
                                           "(section 5.3)")
    clip_teacher: bool = option(False, "clip the teacher's x-hat to [-1, 1]")
    teacher_gradient_ema: float = option(0.99, "bias-corrected moving average of nu across "
                                         "instant iterations (0: none, as in the paper)",
                                         minimum=0.0)
    subtract_data_gradient: bool = option(True, "instant method: nu from the teacher's "
                                          "gradient on the generator's samples less that on "
                                          "the data (eq. 10); false: eq. 9's, as Algorithm 3")
    preconditioner_steps: int = option(0, "instant method: estimate Lambda from this many "
                                       "batches instead of the teacher's Adam state (0: use "
                                       "the Adam state)", minimum=0)
    batch_size: int = option(2048, "distillation batch size", minimum=1)
    steps: int = option(200_000, "distillation steps (one step = one auxiliary + one "
                        "generator update for the alternating method)", minimum=1)
    learning_rate: float | None = option(
        None, "peak learning rate (null: MomentMatchingDistiller.compile's default, 1e-4, or "
        "3e-4 with distill.lora_rank; the paper does not give it)", minimum=0.0)
    warmup_steps: int = option(1000, "linear learning-rate warmup", minimum=0)
    decay_to_zero: bool = option(True, "then decay the learning rate linearly to 0 at "
                                 "distill.steps")
    adam: dict = option(PAPER_ADAM, "Adam arguments of both networks: beta_1, beta_2, "  # noqa: RUF009
                        "epsilon, global_clipnorm")
    checkpoint_every: int = option(1000, "steps between checkpoints (atomic, in RUN_DIR/backup; "
                                   "docs/reliability.md), CSV/TensorBoard rows and "
                                   "progress-bar epochs; divides distill.steps", minimum=1)
    sample_every: int = option(5000, "steps between sample grids (a multiple of "
                               "checkpoint_every; 0: none)", minimum=0)
    fid_every: int = option(5000, "steps between FIDs during distillation, the best kept (a "
                            "multiple of checkpoint_every; 0: none)", minimum=0)
    seed: int = option(0, "seed of the distiller's draws and data order")


@dataclasses.dataclass
class EvalConfig(Section):
    section: typing.ClassVar[str] = "eval"
    feature_extractor: str = option(
        "fid_inception", '"digits" (shipped DigitsFeatures, for 8x8 digits), "inception_v3" '
        '(InceptionFeatures, images of 75+ pixels) or "color_layout" (ColorLayoutFeatures, '
        "mean colours of the image quadrants: for tiny colour images such as the 8x8 "
        'captioned shapes) or "fid_inception" (pytorch-fid\'s Inception, FIDs comparable '
        "with papers; needs its converted weights)", choices=tuple(FEATURE_EXTRACTORS))
    inception_weights: str | None = option(
        "imagenet", '"imagenet" (downloaded by Keras), a weights file, or null (random: for '
        "tests only)")
    fid_inception_weights: str = option(
        "default", 'eval.feature_extractor "fid_inception": the .weights.h5 converted once '
        "from pytorch-fid's pt_inception-2015-12-05-6726825d.pth by "
        'keras_mm.metrics.FIDInceptionFeatures.from_pytorch_fid ("default": '
        "~/.keras/keras_mm/fid_inception.weights.h5, where the converter writes)")
    num_samples: int = option(50_000, "samples per FID / evaluation", minimum=1)
    num_reference: int | None = option(
        50_000, "real images of the reference statistics (null: the whole split); captions: "
        "the evaluation samples take the captions of the first eval.num_samples of them "
        "(reused cyclically if fewer)", minimum=1)
    reference_split: str = option("train", 'TFDS split of the reference images (captions, '
                                  '"shapes": a held-out draw with another seed)')
    batch_size: int = option(500, "samples per sampling call and images per feature batch",
                             minimum=1)
    seed: int = option(0, "seed of the evaluation samples, fixed across evaluations")
    teacher_num_steps: int = option(256, "sampling steps of a teacher in `evaluate`, "
                                    "`sample`, `export` and its grids", minimum=1)
    guidance_scale: float = option(0.0, "classifier-free guidance when sampling for "
                                   "evaluation")
    precision_recall: bool = option(True, "also report improved precision and recall")
    class_accuracy: bool = option(True, "also report class accuracy (needs a classifier head "
                                  "over the data's labels: DigitsFeatures, or Inception on "
                                  "ImageNet)")


@dataclasses.dataclass
class GridConfig(Section):
    section: typing.ClassVar[str] = "grid"
    num_samples: int = option(100, "images per sample grid", minimum=1)
    num_columns: int = option(10, "images per grid row", minimum=1)


SECTIONS = {section.section: section for section in (
    DataConfig, ModelConfig, TeacherConfig, DistillConfig, EvalConfig, GridConfig)}


@dataclasses.dataclass
class RunConfig:
    """A whole run config: one dataclass per section (`SECTIONS`) and a description."""

    description: str = ""
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    teacher: TeacherConfig = dataclasses.field(default_factory=TeacherConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    grid: GridConfig = dataclasses.field(default_factory=GridConfig)

    @classmethod
    def from_dict(cls, config):
        """The checked config of a nested dict; missing keys take their defaults."""
        unknown = sorted(set(config) - {"description", *SECTIONS})
        if unknown:
            raise ConfigError(f"Unknown config key {unknown[0]!r}; the sections are "
                              f"{sorted(SECTIONS)} and 'description'.")
        sections = {name: section.from_dict(config.get(name, {}))
                    for name, section in SECTIONS.items()}
        return cls(description=config.get("description", ""), **sections)

    def to_dict(self):
        return dataclasses.asdict(self)


def config_keys():
    """`{"section.key": help}` of every config key, in order (the --help text)."""
    keys = {"description": "one line on what the config is for"}
    for name, section in SECTIONS.items():
        for field in dataclasses.fields(section):
            keys[f"{name}.{field.name}"] = field.metadata["help"]
    return keys
