"""KerasHub's Stable Diffusion 3 as a teacher: a tiny random `StableDiffusion3Backbone` (small
MMDiT, VAE, CLIP-L/G, no T5; nothing downloads) through sampling, both distillation methods,
`.keras` save/load, resume and export."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_mm
from keras_mm.models import sd3
from tests.helpers import InterruptAt

keras_hub = pytest.importorskip("keras_hub")


def np_(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


@pytest.fixture(scope="module")
def backbone():
    from keras_hub.src.models.clip.clip_text_encoder import CLIPTextEncoder
    from keras_hub.src.models.vae.vae_backbone import VAEBackbone

    keras.utils.set_random_seed(0)
    vae = VAEBackbone([32] * 4, [1] * 4, [32] * 4, [1] * 4, sampler_method="mode", name="vae")
    clip_l = CLIPTextEncoder(20, 8, 8, 1, 2, 16, "quick_gelu", -1, max_sequence_length=4,
                             name="clip_l")
    clip_g = CLIPTextEncoder(20, 8, 8, 1, 2, 16, "gelu", -1, max_sequence_length=4,
                             name="clip_g")
    return keras_hub.models.StableDiffusion3Backbone(
        mmdit_patch_size=2, mmdit_hidden_dim=16, mmdit_num_layers=1, mmdit_num_heads=2,
        mmdit_position_size=4, mmdit_qk_norm=None, mmdit_dual_attention_indices=None,
        vae=vae, clip_l=clip_l, clip_g=clip_g, image_shape=(32, 32, 3))


@pytest.fixture(scope="module")
def prompts(backbone):
    tokens = np.array([[1, 2, 3, 19], [1, 5, 19, 0], [1, 7, 8, 19], [1, 9, 19, 0]], "int32")
    condition = sd3.encode_prompts(backbone, {"clip_l": tokens, "clip_g": tokens[:, ::-1]})
    return {key: np_(value).astype("float32") for key, value in condition.items()}


@pytest.fixture(scope="module")
def data(backbone, prompts):
    """Training data of distillation: VAE latents of (random) images and their prompts."""
    images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    latents = np_(sd3.encode_images(backbone, images)).astype("float32")
    return {"images": latents, **prompts}


def test_denoiser_is_keras_hubs_mmdit_at_sd3s_timestep(backbone, prompts):
    teacher = sd3.sd3_teacher(backbone)
    assert teacher.image_shape == (4, 4, 16) and teacher.family == "flow"
    assert teacher.conditioning.signature["context"][0] == ("B", 8, 4096)
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4, 4, 4, 16)).astype("float32")
    t = np.array([0.1, 0.4, 0.7, 0.95], "float32")
    logsnr = teacher.schedule.logsnr(t)
    # KerasHub's scheduler: sigma = 3u / (1 + 2u) (shift 3), timestep = 1000 sigma.
    u = teacher.schedule.t_min + t * (teacher.schedule.t_max - teacher.schedule.t_min)
    sigma = 3 * u / (1 + 2 * u)
    velocity = np_(backbone.diffuser({"latent": z, **{k: prompts[k] for k in prompts},
                                      "timestep": (1000 * sigma)[:, None]}))
    x_hat = np_(teacher.denoise(z, logsnr, prompts))
    np.testing.assert_allclose(x_hat, z - sigma[:, None, None, None] * velocity, atol=1e-4)
    # A DDIM step of keras_mm from t to s is KerasHub's Euler step z + (sigma_s - sigma_t) v.
    sigma_s = 0.5 * sigma
    eps_hat = (z - (1 - sigma[:, None, None, None]) * x_hat) / sigma[:, None, None, None]
    ddim = (1 - sigma_s)[:, None, None, None] * x_hat + sigma_s[:, None, None, None] * eps_hat
    euler = np_(backbone.euler_step(z, velocity, sigma[:, None, None, None],
                                    sigma_s[:, None, None, None]))
    np.testing.assert_allclose(ddim, euler, atol=1e-4)


def test_teacher_samples_latents_and_decodes(backbone, prompts):
    teacher = sd3.sd3_teacher(backbone)
    condition = {k: v[:2] for k, v in prompts.items()}
    latents = np_(teacher.sample(condition=condition, num_steps=2, guidance_scale=2.0, seed=3))
    again = np_(teacher.sample(condition=condition, num_steps=2, guidance_scale=2.0, seed=3))
    assert latents.shape == (2, 4, 4, 16) and np.isfinite(latents).all()
    np.testing.assert_array_equal(latents, again)
    assert not np.allclose(latents[0], latents[1])  # different prompts, different noise
    images = np_(sd3.decode_latents(backbone, latents))
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    with pytest.raises(ValueError, match="pooled_projection"):
        teacher.sample(condition={"context": condition["context"]}, num_steps=2)
    with pytest.raises(ValueError, match="context has size 5 on axis 2"):
        teacher.sample(condition={**condition, "context": condition["context"][..., :5]},
                       num_steps=2)
    with pytest.raises(ValueError, match="Labels were given"):
        teacher.sample(labels=[0, 1], num_steps=2)


@pytest.mark.parametrize("method", ["alternating", "instant"])
def test_both_methods_distill_and_save(backbone, data, method, tmp_path):
    teacher = sd3.sd3_teacher(backbone)
    # theta is the MMDiT's weights, also once an earlier distiller froze the shared MMDiT.
    assert len(teacher.parameters) == len(backbone.diffuser.weights)
    distiller = keras_mm.MomentMatchingDistiller(
        teacher, num_steps=2, method=method, teacher_guidance_scale=1.5,
        preconditioner="identity" if method == "instant" else None, seed=0)
    distiller.compile(warmup_steps=1, learning_rate=1e-3)
    before = [np_(w) for w in distiller.generator.parameters]
    history = distiller.fit(data, batch_size=2, epochs=1, verbose=0, shuffle=False)
    losses = history.history["instant_loss" if method == "instant" else "generator_loss"]
    assert np.isfinite(losses).all()
    after = [np_(w) for w in distiller.generator.parameters]
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    condition = {k: v[:2] for k, v in data.items() if k != "images"}
    samples = np_(distiller.sample(condition=condition, seed=1))
    assert samples.shape == (2, 4, 4, 16) and np.isfinite(samples).all()
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored.generator.network, sd3.SD3Denoiser)
    assert restored.teacher.conditioning.get_config() == teacher.conditioning.get_config()
    np.testing.assert_allclose(np_(restored.sample(condition=condition, seed=1)), samples,
                               atol=1e-5)


def test_backup_and_restore_resumes_bit_identically(backbone, data, tmp_path):
    def run(callbacks):
        distiller = keras_mm.MomentMatchingDistiller(sd3.sd3_teacher(backbone), num_steps=2,
                                                     seed=7)
        distiller.compile(warmup_steps=1, learning_rate=1e-3)
        distiller.fit(data, batch_size=2, epochs=2, verbose=0, shuffle=False,
                      callbacks=callbacks)
        return [np_(w) for w in distiller.generator.network.weights]

    reference = run([])
    with pytest.raises(RuntimeError, match="interrupted"):
        run([keras.callbacks.BackupAndRestore(str(tmp_path / "backup")), InterruptAt(1)])
    resumed = run([keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    for a, b in zip(reference, resumed):
        np.testing.assert_array_equal(a, b)


def test_exported_sampler_matches_in_process(backbone, prompts, tmp_path):
    tf = pytest.importorskip("tensorflow")
    teacher = sd3.sd3_teacher(backbone)
    decoder = sd3.SD3Decoder.from_backbone(backbone)
    path = keras_mm.export_sampler(teacher, str(tmp_path / "sd3"), num_steps=2,
                                   guidance_scale=1.5, output="float", verbose=False,
                                   decoder=decoder)
    exported = tf.saved_model.load(path)
    condition = {k: v[:2] for k, v in prompts.items()}
    noise = keras_mm.export.sampler_noise([4, 2], 2, teacher.image_shape, 2)
    latents = teacher.sample(condition=condition, noise=noise, num_steps=2, guidance_scale=1.5)
    expected = np_(decoder(latents))
    # The decoder is KerasHub's decode step.
    np.testing.assert_allclose(np_(sd3.decode_latents(backbone, latents)), expected, atol=1e-5)
    from_noise = exported.sample_from_noise(**condition, noise=noise).numpy()
    from_seed = exported.sample(**condition, seed=tf.constant([4, 2])).numpy()
    assert from_noise.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(from_noise, expected, atol=1e-4)
    np.testing.assert_allclose(from_seed, expected, atol=1e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="pooled_projection"):
        exported.sample(context=condition["context"],
                        pooled_projection=condition["pooled_projection"][:1],
                        seed=tf.constant([0, 0]))
    with pytest.raises(TypeError, match="decoder"):
        keras_mm.export_sampler(teacher, str(tmp_path / "bad"), num_steps=2, decoder=np.ones)


def test_latent_teacher_checks_finiteness_not_the_image_range(backbone, data):
    """VAE latents lie outside [-1, 1]: a latent teacher trains on them, and still refuses
    NaN; an image teacher refuses the same arrays by their range."""
    teacher = sd3.sd3_teacher(backbone)
    assert teacher.latent and np.abs(data["images"]).max() > 1.5
    teacher.check_training_arrays(data)
    bad = {**data, "images": data["images"].copy()}
    bad["images"][0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        teacher.check_training_arrays(bad)
    image_teacher = keras_mm.DiffusionModel(teacher.network, schedule=teacher.schedule,
                                            prediction_type="flow",
                                            conditioning=teacher.conditioning)
    with pytest.raises(ValueError, match=r"must be in \[-1, 1\]"):
        image_teacher.check_training_arrays(data)


def test_guidance_steers_away_from_the_empty_prompt_as_keras_hubs(backbone, prompts,
                                                                   tmp_path):
    """With `empty_prompt`, guidance is KerasHub's: v = v_empty + (1 + w)(v_prompt - v_empty)
    (x-hat = z - sigma v is linear in v); the empty prompt's embeddings are held by the
    denoiser, saved with it, and copied into a distiller's student."""
    empty = np.array([[1, 19, 0, 0]], "int32")
    empty_ids = {"clip_l": empty, "clip_g": empty}
    teacher = sd3.sd3_teacher(backbone, empty_prompt=empty_ids)
    null = {k: np_(v) for k, v in sd3.encode_prompts(backbone, empty_ids).items()}
    assert np.abs(null["context"]).max() > 0.1  # not the zeros of SD3Conditioning
    condition = {k: v[:2] for k, v in prompts.items()}
    z = np.random.default_rng(2).normal(size=(2, 4, 4, 16)).astype("float32")
    logsnr = np.array([-1.0, 2.0], "float32")
    sigma = 1.0 / (1.0 + np.exp(logsnr / 2))  # flow matching: sigma = sigmoid(-logsnr / 2)

    def velocity(context, pooled):
        return np_(backbone.diffuser({"latent": z, "context": context,
                                      "pooled_projection": pooled,
                                      "timestep": (1000 * sigma)[:, None]}))

    v_prompt = velocity(condition["context"], condition["pooled_projection"])
    v_empty = velocity(np.repeat(null["context"], 2, 0).astype("float32"),
                       np.repeat(null["pooled_projection"], 2, 0).astype("float32"))
    expected = z - sigma[:, None, None, None] * (v_empty + 3.0 * (v_prompt - v_empty))
    guided = np_(teacher.guided_denoise(z, logsnr, condition, guidance_scale=2.0))
    np.testing.assert_allclose(guided, expected, atol=1e-4)
    against_zeros = np_(sd3.sd3_teacher(backbone).guided_denoise(z, logsnr, condition, 2.0))
    assert np.abs(against_zeros - guided).max() > 1e-3

    path = str(tmp_path / "teacher.keras")
    teacher.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(np_(restored.guided_denoise(z, logsnr, condition, 2.0)), guided,
                               atol=1e-5)
    distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=2, seed=0)
    np.testing.assert_array_equal(np_(distiller.generator.null_condition(1)["context"]),
                                  null["context"])
    with pytest.raises(ValueError, match="must be one prompt's"):
        teacher.network.set_null_condition({k: np.repeat(v, 2, 0) for k, v in null.items()})
