"""Whole training runs from a config: `train_teacher` and `distill`, resumable.

Each locks its run directory for its whole life (`RunLock`: a second command on it is
refused), prepares it (`prepare_run_dir`: start, resume or refuse), builds its models from
the config, trains in checkpoints with the standard callbacks from the resumed step's batch
of the data stream on, and saves its artifacts (atomically, before the checkpoints are
removed). A run that diverges stops with `DivergenceError` and writes no artifact.
`keras-mm train-teacher` and `keras-mm distill` are these functions behind a parser; from
Python:

    config = keras_mm.configs.get_config("digits")
    teacher_path = keras_mm.training.train_teacher(config, "runs/teacher")
    generator_path = keras_mm.training.distill(config, teacher_path, "runs/student")
"""

import json
import os

import keras

from keras_mm.configs import ConfigError, check_config
from keras_mm.distillation.lora import merge_lora
from keras_mm.training import builders, captions, data, faults, sd3
from keras_mm.training.callbacks import (
    BEST_WEIGHTS,
    fid_callbacks,
    standard_callbacks,
)
from keras_mm.training.checkpoint import write_atomically
from keras_mm.training.lock import RunLock
from keras_mm.training.run_dir import in_checkpoints, prepare_run_dir, training_plan

TEACHER_ARTIFACTS = ["teacher.keras"]
DISTILL_ARTIFACTS = ["distiller.keras", "generator.keras"]
# The best weights by FID and FIDCallback's record of them (best_fid.best.json).
DISTILL_OUTPUTS = [BEST_WEIGHTS, BEST_WEIGHTS.replace(".weights.h5", ".*json")]


def check_runnable(config):
    """One-line errors for a data section that cannot run, before anything is loaded."""
    check_config(config)
    if sd3.is_sd3(config):
        sd3.check_sd3_config(config)
    elif config["data"]["source"] == "captions":
        captions.check_caption_config(config)


def fit_in_checkpoints(model, stream, epochs, steps_per_epoch, callbacks, verbose,
                       resumed_epoch):
    """`model.fit` over `epochs` checkpoints of `steps_per_epoch` steps of `stream`."""
    if resumed_epoch:
        print(f"Resuming from the checkpoint at step {resumed_epoch * steps_per_epoch}.")
    try:
        # The stream is shuffled already (and endless), so Keras has nothing to shuffle.
        return model.fit(stream, epochs=epochs, steps_per_epoch=steps_per_epoch,
                         callbacks=callbacks, verbose=verbose, shuffle=False)
    except ConfigError:  # e.g. DivergenceError, already one line
        raise
    except ValueError as error:
        raise ConfigError(str(error)) from None


def train_teacher(config, run_dir, overwrite=False, verbose=1):
    """Train the config's teacher in `run_dir` (resuming an interrupted run there).

    Returns:
        The path of the saved teacher, RUN_DIR/teacher.keras (with its Adam state, the
        instant method's preconditioner).
    """
    if sd3.is_sd3(config):
        raise ConfigError("model.network 'sd3' is a trained teacher (model.sd3_preset): distill "
                          "it with `keras-mm distill` (no --teacher); train-teacher trains "
                          "UViT teachers.")
    check_runnable(config)
    training = config["teacher"]
    steps_per_epoch, epochs = training_plan(training, "teacher")
    with RunLock(run_dir):
        return _train_teacher(config, run_dir, overwrite, verbose, steps_per_epoch, epochs)


def _train_teacher(config, run_dir, overwrite, verbose, steps_per_epoch, epochs):
    training = config["teacher"]
    resumed_epoch = prepare_run_dir(run_dir, TEACHER_ARTIFACTS, config, overwrite)
    # The text encoder first: a missing one is reported before a large UViT is built.
    encoder = captions.load_text_encoder(config) if captions.is_text(config) else None
    keras.utils.set_random_seed(training["seed"])
    teacher = builders.build_teacher(config)
    caption_data = captions.caption_data(config, teacher, run_dir, encoder)
    print(f"Teacher: {teacher.network.count_params():,} parameters, backend "
          f"{keras.backend.backend()}, {training['steps']} steps at batch "
          f"{training['batch_size']}.")
    callbacks = standard_callbacks(
        run_dir, "teacher", config, steps_per_epoch, training["sample_every"],
        resume_from=resumed_epoch, num_steps=config["eval"]["teacher_num_steps"],
        captions=caption_data,
        divergence_hint=f"lower teacher.learning_rate (now {training['learning_rate']:g})")
    stream = data.training_stream(config, training["batch_size"], training["seed"],
                                  caption_data, start=resumed_epoch * steps_per_epoch)
    fit_in_checkpoints(teacher, stream, epochs, steps_per_epoch, callbacks, verbose,
                       resumed_epoch)
    path = save_artifact(teacher, os.path.join(run_dir, "teacher.keras"))
    print(f"Wrote {path}")
    finish(callbacks)
    return path


def save_artifact(model, path):
    """`model.save(path)` through a temporary file renamed into place: a kill leaves the
    old file or the whole new one."""
    write_atomically(path, model.save, fault_name="final")
    return path


def finish(callbacks):
    """Remove the checkpoints, now that the artifacts are written."""
    faults.maybe_kill("cleanup")
    callbacks[-1].remove()


def distill(config, teacher_path, run_dir, overwrite=False, verbose=1):
    """Distill the teacher at `teacher_path` with the config in `run_dir` (resuming an
    interrupted run there), keeping the generator with the best FID.

    Returns:
        The path of the generator, RUN_DIR/generator.keras: the weights with the best FID
        (every distill.fid_every steps), or the final ones without FID. The final state of
        teacher, generator, auxiliary and optimizers is in RUN_DIR/distiller.keras.
    """
    check_runnable(config)
    section = config["distill"]
    steps_per_epoch, epochs = training_plan(section, "distill")
    fid_every = in_checkpoints(section["fid_every"], steps_per_epoch, "distill.fid_every")
    if sd3.is_sd3(config):
        return _distill_sd3(config, run_dir, overwrite, verbose, steps_per_epoch, epochs)
    # The instant method reads its preconditioner from the teacher's saved Adam state.
    needs_adam = section["method"] == "instant" and not section["preconditioner_steps"]
    encoder = captions.load_text_encoder(config) if captions.is_text(config) else None
    teacher = builders.load_model(teacher_path, compile=needs_adam)
    builders.check_model_fits_data(teacher, config)
    with RunLock(run_dir):
        caption_data = captions.caption_data(config, teacher, run_dir, encoder)
        resumed_epoch = prepare_run_dir(run_dir, DISTILL_ARTIFACTS, config, overwrite,
                                        outputs=DISTILL_OUTPUTS)
        return _distill(config, teacher, run_dir, verbose, steps_per_epoch, epochs,
                        fid_every, caption_data, resumed_epoch)


def _distill_sd3(config, run_dir, overwrite, verbose, steps_per_epoch, epochs):
    """`distill` of an SD3 teacher (model.sd3_preset), on its own samples of prompts or on
    captioned images."""
    from keras_mm.models.sd3 import sd3_teacher

    with RunLock(run_dir):
        if overwrite:
            sd3.clear(run_dir)
        backbone = sd3.load_backbone(config, run_dir)
        # Guidance against the empty prompt, as SD3's own sampler.
        empty_prompt = sd3.load_preprocessor(config).generate_preprocess([""])
        teacher = sd3_teacher(backbone, seed=config["distill"]["seed"],
                              empty_prompt=empty_prompt)
        resumed_epoch = prepare_run_dir(run_dir, DISTILL_ARTIFACTS, config, overwrite,
                                        outputs=DISTILL_OUTPUTS)
        samples = sd3.training_data(config, backbone, teacher, run_dir)
        return _distill(config, teacher, run_dir, verbose, steps_per_epoch, epochs, 0,
                        samples, resumed_epoch)


def _distill(config, teacher, run_dir, verbose, steps_per_epoch, epochs, fid_every,
             caption_data, resumed_epoch):
    section = config["distill"]
    keras.utils.set_random_seed(section["seed"])

    def stream(start=0):
        return data.training_stream(config, section["batch_size"], section["seed"],
                                    caption_data, start=start)

    batches = stream(resumed_epoch * steps_per_epoch)
    estimate = section["method"] == "instant" and section["preconditioner_steps"]
    distiller = builders.build_distiller(config, teacher,
                                         preconditioner_data=stream() if estimate else None)
    print(f"Distilling a {section['num_steps']}-step generator ({section['method']}), backend "
          f"{keras.backend.backend()}, {section['steps']} steps at batch "
          f"{section['batch_size']}, peak learning rate "
          f"{builders.distill_learning_rate(config):g}.")
    fid = fid_callbacks(config, run_dir, fid_every, verbose, caption_data) if fid_every else []
    hint = (f"lower distill.learning_rate (now {builders.distill_learning_rate(config):g}) or "
            f"distill.teacher_guidance_scale (now {section['teacher_guidance_scale']:g})")
    callbacks = standard_callbacks(run_dir, "distill", config, steps_per_epoch,
                                   section["sample_every"], resume_from=resumed_epoch,
                                   captions=caption_data, model_callbacks=fid,
                                   divergence_hint=hint)
    fit_in_checkpoints(distiller, batches, epochs, steps_per_epoch, callbacks, verbose,
                       resumed_epoch)
    path = save_artifact(distiller, os.path.join(run_dir, "distiller.keras"))
    print(f"Wrote {path}")
    which = "final"
    if fid and os.path.exists(fid[0].save_best_to):
        distiller.load_weights(fid[0].save_best_to)
        with open(fid[0].best_record_path) as file:  # also when resumed at the last step
            best = json.load(file)
        which = f"best FID {best['best_fid']:.4f}, step {best['best_step']}"
    # A LoRA generator shares the teacher's weights: saved as a plain network, theta + delta.
    path = save_artifact(merge_lora(distiller.generator),
                         os.path.join(run_dir, "generator.keras"))
    print(f"Wrote {path} ({which})")
    finish(callbacks)
    return path
