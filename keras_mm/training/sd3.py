"""Stable Diffusion 3 runs from a config (model.network "sd3"): the backbone, its prompts'
condition and the distillation data.

The teacher is KerasHub's `StableDiffusion3Backbone` of model.sd3_preset (a Kaggle preset or
a local preset directory) or, with model.sd3_preset null, a randomly initialised tiny one
(`keras_mm.models.sd3.tiny_sd3_backbone`) kept in RUN_DIR/sd3_backbone, so that resuming,
`sample` and `export` see the same weights. Moment matching needs data only to make z_t, so
the data can be the teacher's own many-step samples for a list of prompts (data.source
"prompts", data-free), or captioned images (data.source "image_folder") as VAE latents; either
is made once and cached in the run directory, reused on resume.

    backbone = keras_mm.training.sd3.load_backbone(config, run_dir)
    data = keras_mm.training.sd3.training_data(config, backbone, teacher, run_dir)
"""

import json
import os
import shutil
import warnings

import numpy as np

from keras_mm.configs import ConfigError
from keras_mm.training.captions import first_line
from keras_mm.training.checkpoint import write_atomically

BACKBONE_DIR = "sd3_backbone"  # the random tiny backbone of a run (model.sd3_preset null)
TEACHER_SAMPLES = "teacher_samples.npz"
IMAGE_LATENTS = "image_latents.npz"
# data.path null: a few prompts to run the chain on; a real run passes thousands.
DEFAULT_PROMPTS = (
    "a photo of a cat sitting on a windowsill",
    "a red sports car on a mountain road",
    "a bowl of fruit on a wooden table",
    "a lighthouse at sunset, oil painting",
    "a portrait of an astronaut, studio lighting",
    "a snowy forest at dawn",
    "a city street in the rain at night",
    "a watercolor painting of a fox",
)


def is_sd3(config):
    return config is not None and config["model"]["network"] == "sd3"


def check_sd3_config(config):
    """One-line errors for an SD3 config, before anything is loaded."""
    data, distill = config["data"], config["distill"]
    if data["source"] not in ("prompts", "image_folder"):
        raise ConfigError(
            f"model.network 'sd3' distills from the teacher's own samples (data.source=prompts) "
            f"or captioned images (data.source=image_folder); got {data['source']!r}.")
    if data["num_classes"] is not None:
        raise ConfigError("An SD3 teacher takes prompts, not labels: set data.num_classes=null.")
    height, width, channels = data["image_shape"]
    if channels != 3 or height % 8 or width % 8:
        raise ConfigError(f"data.image_shape of an SD3 teacher is [height, width, 3] with "
                          f"multiples of 8 (its VAE's latents are 8x smaller); got "
                          f"{data['image_shape']}.")
    for key in ("sample_every", "fid_every"):
        if distill[key]:
            raise ConfigError(f"distill.{key} is not available for SD3 teachers yet (grids and "
                              f"FID would need the VAE decoder): set --set distill.{key}=0.")
    if distill["method"] == "instant" and not distill["preconditioner_steps"]:
        raise ConfigError("distill.method=instant needs Lambda, and an SD3 preset has no Adam "
                          "state: set --set distill.preconditioner_steps=N (e.g. 100).")
    path = data["path"]
    if data["source"] == "image_folder":
        if not isinstance(path, str) or not os.path.isdir(path):
            raise ConfigError(f"data.path: no folder of captioned images at {path!r} (images "
                              "and a metadata.jsonl of file_name and text).")
    elif path is not None and not os.path.isfile(path):
        raise ConfigError(f"data.path: no prompts file at '{path}' (a text file, one prompt "
                          "per line; null: keras_mm.training.sd3.DEFAULT_PROMPTS).")


def read_prompts(config):
    """data.path's prompts (one per line, blank lines skipped), or DEFAULT_PROMPTS."""
    path = config["data"]["path"]
    if path is None:
        return list(DEFAULT_PROMPTS)
    with open(path, encoding="utf-8") as file:
        prompts = [line.strip() for line in file if line.strip()]
    if not prompts:
        raise ConfigError(f"data.path '{path}' holds no prompts (one per line).")
    return prompts


def load_backbone(config, run_dir):
    """The `StableDiffusion3Backbone` of model.sd3_preset at data.image_shape; with a null
    preset, the tiny random one of RUN_DIR/sd3_backbone (written on the first call)."""
    import keras_hub

    preset = config["model"]["sd3_preset"]
    image_shape = tuple(config["data"]["image_shape"])
    if preset is None:
        preset = os.path.join(run_dir, BACKBONE_DIR)
        if not os.path.isdir(preset):
            from keras_mm.models.sd3 import tiny_sd3_backbone

            temporary = preset + ".tmp"
            shutil.rmtree(temporary, ignore_errors=True)
            tiny = tiny_sd3_backbone(image_shape, seed=config["distill"]["seed"])
            tiny.save_to_preset(temporary)
            os.replace(temporary, preset)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return keras_hub.models.StableDiffusion3Backbone.from_preset(
                preset, image_shape=image_shape)
    except Exception as error:  # noqa: BLE001 - KerasHub/Kaggle raise many kinds
        raise ConfigError(
            f"Could not load the Stable Diffusion 3 preset model.sd3_preset={preset!r} "
            f"({first_line(error)}): KerasHub downloads it from Kaggle, which needs network "
            "access and Kaggle credentials that accepted its license; or set "
            "model.sd3_preset to a local preset directory.") from None


def load_preprocessor(config):
    """The prompts' tokenizers: the preset's, or `tiny_sd3_preprocessor` for a null preset."""
    preset = config["model"]["sd3_preset"]
    if preset is None:
        from keras_mm.models.sd3 import tiny_sd3_preprocessor

        return tiny_sd3_preprocessor()
    import keras_hub

    try:
        return keras_hub.models.StableDiffusion3TextToImagePreprocessor.from_preset(preset)
    except Exception as error:  # noqa: BLE001
        raise ConfigError(f"Could not load the tokenizers of model.sd3_preset={preset!r}: "
                          f"{first_line(error)}") from None


def encode(backbone, preprocessor, prompts, batch_size=64):
    """SD3's condition of `prompts` as float32 numpy arrays `{"context", "pooled_projection"}`."""
    import keras

    from keras_mm.models.sd3 import encode_prompts

    parts = {"context": [], "pooled_projection": []}
    for start in range(0, len(prompts), batch_size):
        tokens = preprocessor.generate_preprocess(list(prompts[start:start + batch_size]))
        condition = encode_prompts(backbone, tokens)
        for key, value in condition.items():
            parts[key].append(np.asarray(keras.ops.convert_to_numpy(value), "float32"))
    return {key: np.concatenate(value) for key, value in parts.items()}


def clear(run_dir):
    """Remove what an SD3 run keeps across restarts (--overwrite)."""
    shutil.rmtree(os.path.join(run_dir, BACKBONE_DIR), ignore_errors=True)
    for name in (TEACHER_SAMPLES, IMAGE_LATENTS):
        path = os.path.join(run_dir, name)
        if os.path.exists(path):
            os.remove(path)


def training_data(config, backbone, teacher, run_dir):
    """The run's data, made once and cached in the run directory: `ImageLatents` of a
    captioned image folder (data.source "image_folder"), else `TeacherSamples`."""
    kind = ImageLatents if config["data"]["source"] == "image_folder" else TeacherSamples
    return kind(config, backbone, teacher, run_dir)


class CachedLatents:
    """Latents and their prompts' condition, made once (`make`) and kept in
    RUN_DIR/`file_name` with the settings that made them; a resumed run reads them back, and
    a file made with other settings is refused.

    Args:
        config: the run's config.
        backbone: its `StableDiffusion3Backbone` (VAE and text encoders).
        teacher: `sd3_teacher(backbone)`.
        run_dir: the run directory.
    """

    file_name = None

    def __init__(self, config, backbone, teacher, run_dir):
        self.path = os.path.join(run_dir, self.file_name)
        self.config = config
        self.settings = {"preset": config["model"]["sd3_preset"],
                         "image_shape": config["data"]["image_shape"], **self.own_settings()}
        if os.path.exists(self.path):
            self.arrays = self._read()
            print(f"Read {len(self.arrays['latents'])} latents from {self.path}.")
        else:
            self.arrays = self.make(backbone, teacher)
            write_atomically(self.path, self._write)
            print(f"Wrote {len(self.arrays['latents'])} latents to {self.path}.")

    def own_settings(self):
        """What else decides the latents (a JSON-able dict)."""
        raise NotImplementedError

    def make(self, backbone, teacher):
        """`{"latents", "prompt_index", "context", "pooled_projection"}` numpy arrays."""
        raise NotImplementedError

    def _write(self, path):
        with open(path, "wb") as file:
            np.savez(file, settings=json.dumps(self.settings), **self.arrays)

    def _read(self):
        with np.load(self.path) as archive:
            stored = json.loads(str(archive["settings"]))
            if stored != self.settings:
                changed = sorted(k for k in self.settings if stored.get(k) != self.settings[k])
                raise ConfigError(
                    f"{self.path} holds latents made with other settings "
                    f"({', '.join(changed)}): delete it, or pass --overwrite.")
            return {key: archive[key] for key in archive.files if key != "settings"}

    def stream(self, batch_size, seed, start=0):
        """Endless `({"images": latents, "context", "pooled_projection"},)` batches; `start`
        as in `keras_mm.datasets.infinite_batches`."""
        from keras_mm.datasets import infinite_batches

        arrays = self.arrays
        for latents, rows in infinite_batches(arrays["latents"], arrays["prompt_index"],
                                              batch_size=batch_size, seed=seed, start=start):
            # Keras takes a generator's batches as tuples.
            yield ({"images": latents, "context": arrays["context"][rows],
                    "pooled_projection": arrays["pooled_projection"][rows]},)


class TeacherSamples(CachedLatents):
    """Data-free distillation data: the guided teacher's samples for a list of prompts.

    data.num_examples latents (cycling through the prompts of data.path) sampled with
    eval.teacher_num_steps steps at distill.teacher_guidance_scale, in
    RUN_DIR/teacher_samples.npz with each prompt's condition.
    """

    file_name = TEACHER_SAMPLES

    def own_settings(self):
        prompts = read_prompts(self.config)
        distill = self.config["distill"]
        return {"prompts": prompts,
                "num_examples": self.config["data"]["num_examples"] or len(prompts),
                "num_steps": self.config["eval"]["teacher_num_steps"],
                "guidance_scale": distill["teacher_guidance_scale"], "seed": distill["seed"]}

    def make(self, backbone, teacher):
        import keras

        settings, batch_size = self.settings, self.config["eval"]["batch_size"]
        condition = encode(backbone, load_preprocessor(self.config), settings["prompts"])
        index = np.arange(settings["num_examples"]) % len(settings["prompts"])
        print(f"Sampling {len(index)} teacher latents ({settings['num_steps']} steps, guidance "
              f"{settings['guidance_scale']:g}) for {len(settings['prompts'])} prompts.")
        latents = []
        for number, start in enumerate(range(0, len(index), batch_size)):
            rows = index[start:start + batch_size]
            batch = teacher.sample(
                condition={key: value[rows] for key, value in condition.items()},
                num_steps=settings["num_steps"], guidance_scale=settings["guidance_scale"],
                seed=settings["seed"] * 100_003 + number)
            latents.append(np.asarray(keras.ops.convert_to_numpy(batch), "float32"))
        return {"latents": np.concatenate(latents), "prompt_index": index.astype("int32"),
                **condition}


class ImageLatents(CachedLatents):
    """Captioned images (data.path: a folder with metadata.jsonl, see
    `keras_mm.datasets.load_captioned_folder`) as the VAE's latents, each distinct caption
    encoded once, in RUN_DIR/image_latents.npz."""

    file_name = IMAGE_LATENTS

    def own_settings(self):
        return {"path": os.path.abspath(self.config["data"]["path"])}

    def make(self, backbone, teacher):
        import keras

        from keras_mm.datasets import DatasetNotAvailableError, load_captioned_folder
        from keras_mm.models.sd3 import encode_images

        try:
            images, captions = load_captioned_folder(self.config["data"]["path"],
                                                     self.config["data"]["image_shape"])
        except (DatasetNotAvailableError, ValueError) as error:
            raise ConfigError(f"data.path: {error}") from None
        distinct = sorted(set(captions))
        index = np.array([distinct.index(caption) for caption in captions], "int32")
        batch_size = self.config["eval"]["batch_size"]
        print(f"Encoding {len(images)} images ({len(distinct)} captions) with the VAE.")
        latents = [np.asarray(keras.ops.convert_to_numpy(
            encode_images(backbone, images[start:start + batch_size])), "float32")
            for start in range(0, len(images), batch_size)]
        condition = encode(backbone, load_preprocessor(self.config), distinct)
        return {"latents": np.concatenate(latents), "prompt_index": index, **condition}


def sample_images(config, model, prompts, run_dir, num_steps, guidance_scale=0.0,
                  sampler="ancestral", seed=0):
    """Images in [-1, 1] of an SD3 teacher or student for `prompts`, decoded by the VAE of
    the run's backbone."""
    import keras

    from keras_mm.models.sd3 import decode_latents

    backbone = load_backbone(config, run_dir)
    condition = encode(backbone, load_preprocessor(config), prompts)
    latents = model.sample(condition=condition, num_steps=num_steps, sampler=sampler,
                           guidance_scale=guidance_scale, seed=seed)
    images = keras.ops.convert_to_numpy(decode_latents(backbone, latents))
    return np.clip(np.asarray(images, "float32"), -1.0, 1.0)
