"""Models from a config: the teacher, the distiller and their optimizers; saved models back.

    teacher = keras_mm.training.build_teacher(config)          # compiled, ready to fit
    distiller = keras_mm.training.build_distiller(config, teacher)  # compiled, ready to fit
"""

import importlib
import json
import os
import zipfile

import keras

from keras_mm.configs import ConfigError
from keras_mm.distillation.optimizers import default_learning_rate
from keras_mm.training.captions import check_text_dim


def build_teacher(config, compile=True):
    """A fresh `DiffusionModel` around the config's UViT, compiled with teacher.learning_rate
    (after teacher.warmup_steps of linear warmup), Adam and global-norm clipping at 1."""
    from keras_mm.distillation.optimizers import WarmupLinearDecay
    from keras_mm.models.diffusion_model import DiffusionModel
    from keras_mm.models.uvit import UViT

    model, data = config["model"], config["data"]
    # The data states the image shape and the classes; the network takes them from there.
    arguments = {**model["uvit"], "image_shape": data["image_shape"],
                 "num_classes": data["num_classes"]}
    try:
        if model["uvit_preset"]:
            network = UViT.from_preset(model["uvit_preset"], **arguments)
        else:
            network = UViT(**arguments)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"Could not build the UViT from model.uvit_preset/model.uvit: "
                          f"{error}") from None
    check_text_dim(network, config)
    teacher = DiffusionModel(
        network,
        prediction_type=model["prediction_type"],
        loss_weighting=model["loss_weighting"],
        condition_dropout=model["condition_dropout"],
        seed=config["teacher"]["seed"],
    )
    if compile:
        training = config["teacher"]
        try:
            schedule = WarmupLinearDecay(training["learning_rate"], training["warmup_steps"])
        except ValueError as error:
            raise ConfigError(f"teacher: {error}") from None
        teacher.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule,
                                                        global_clipnorm=1.0))
    return teacher


def distill_learning_rate(config):
    """distill.learning_rate, or `MomentMatchingDistiller.compile`'s default for the method."""
    distill = config["distill"]
    if distill["learning_rate"] is not None:
        return distill["learning_rate"]
    return default_learning_rate(distill["lora_rank"])


def distill_optimizer(config):
    """One network's distillation optimizer from distill.adam (Appendix B's by default)."""
    from keras_mm.distillation.optimizers import AdamWithoutMomentum, WarmupLinearDecay

    distill = config["distill"]
    total_steps = distill["steps"] if distill["decay_to_zero"] else None
    # beta_1 = 0 (the paper's): Adam without its unused first-moment slot.
    adam = (AdamWithoutMomentum if distill["adam"].get("beta_1", 0.9) == 0.0
            else keras.optimizers.Adam)
    schedule = WarmupLinearDecay(distill_learning_rate(config), distill["warmup_steps"],
                                 total_steps)
    return adam(learning_rate=schedule, **distill["adam"])


def build_distiller(config, teacher, preconditioner_data=None):
    """A compiled `MomentMatchingDistiller` of `teacher` with the config's distill section.

    Args:
        config: the run's config.
        teacher: a built `DiffusionModel` (for the instant method without
            distill.preconditioner_steps, loaded with its optimizer: Lambda comes from
            its Adam state).
        preconditioner_data: batches to estimate Lambda from when
            distill.preconditioner_steps > 0 (the instant method).
    """
    from keras_mm.distillation import MomentMatchingDistiller, estimate_preconditioner

    distill = config["distill"]
    preconditioner = None
    if distill["method"] == "instant" and distill["preconditioner_steps"]:
        print(f"Estimating the preconditioner from {distill['preconditioner_steps']} batches.")
        preconditioner = estimate_preconditioner(teacher, preconditioner_data,
                                                 steps=distill["preconditioner_steps"])
    try:
        distiller = MomentMatchingDistiller(
            teacher,
            num_steps=distill["num_steps"],
            method=distill["method"],
            time_sampler=distill["time_sampler"],
            weighting=distill["weighting"],
            conditional_sampling=distill["conditional_sampling"],
            teacher_guidance_scale=distill["teacher_guidance_scale"],
            clip_teacher=distill["clip_teacher"],
            preconditioner=preconditioner,
            teacher_gradient_ema=distill["teacher_gradient_ema"],
            subtract_data_gradient=distill["subtract_data_gradient"],
            lora_rank=distill["lora_rank"],
            remat=distill["remat"],
            seed=distill["seed"],
        )
        distiller.compile(generator_optimizer=distill_optimizer(config),
                          auxiliary_optimizer=distill_optimizer(config))
    except (TypeError, ValueError) as error:
        raise ConfigError(f"distill: {error}") from None
    return distiller


def check_model_fits_data(model, config):
    """The network (or model) takes the config's images and condition."""
    data = config["data"]
    if tuple(model.image_shape) != tuple(data["image_shape"]):
        raise ConfigError(
            f"The network's image_shape {tuple(model.image_shape)} differs from "
            f"data.image_shape {tuple(data['image_shape'])}; set model.uvit.image_shape "
            "or data.image_shape so that they agree."
        )
    if model.num_classes != data["num_classes"]:
        raise ConfigError(
            f"The network has num_classes={model.num_classes} but data.num_classes is "
            f"{data['num_classes']}; set model.uvit.num_classes to match."
        )
    check_text_dim(model, config)


def default_num_steps(model, config):
    """Sampling steps of `model` when none are given: k for a distiller or its generator
    (`MomentMatchingDistiller` names its generator "generator"), else the teacher's."""
    if hasattr(model, "generator"):
        return model.num_steps
    if model.name == "generator":
        return config["distill"]["num_steps"]
    return config["eval"]["teacher_num_steps"]


def load_model(path, custom_modules=(), allow_distiller=False, compile=False):
    """Load a `.keras` DiffusionModel (or, with `allow_distiller`, a MomentMatchingDistiller),
    importing the keras_mm modules its config names and `custom_modules`."""
    from keras_mm.distillation import MomentMatchingDistiller
    from keras_mm.export import custom_object_modules
    from keras_mm.models.diffusion_model import DiffusionModel

    if not os.path.isfile(path):
        raise ConfigError(f"No .keras file at '{path}'.")
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as error:
        raise ConfigError(f"'{path}' is not a .keras file: {error}") from error
    # keras_mm's own modules are imported automatically; others only when named.
    own_modules = [m for m in custom_object_modules(config) if m.startswith("keras_mm.")]
    for module in own_modules + list(custom_modules or ()):
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise ConfigError(f"--custom-module {module}: {error}") from error
    try:
        model = keras.saving.load_model(path, compile=compile)
    except OSError as error:  # h5py: an inner weights file cut short or damaged
        raise ConfigError(f"'{path}' is damaged ({error}); write it again (rerun the command "
                          "that made it).") from error
    except (TypeError, ValueError) as error:
        raise ConfigError(
            f"Could not load '{path}': {error}\nIf the network uses custom layers, pass the "
            "module that defines them with --custom-module."
        ) from error
    allowed = (DiffusionModel, MomentMatchingDistiller) if allow_distiller else DiffusionModel
    if not isinstance(model, allowed):
        raise ConfigError(
            f"'{path}' holds a {type(model).__name__}, not a keras_mm.DiffusionModel. Save "
            "the teacher or the distiller's `.generator`."
        )
    return model
