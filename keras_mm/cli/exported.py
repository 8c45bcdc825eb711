"""`keras-mm sample` on an exported SavedModel: its metadata says which inputs it takes;
captions are tokenized with the vocabulary exported beside it."""

import os
import re

from keras_mm.cli.options import CommandError
from keras_mm.training import captions


def saved_model_tokens(args, sequence_length, config):
    """Token ids and padding masks of --captions for an exported text sampler."""
    from keras_mm import export

    if os.path.isfile(os.path.join(args.model, export.VOCABULARY_FILE)):
        return export.tokenize_for_sampler(args.model, args.captions, sequence_length)
    if config is None:
        raise CommandError(
            f"'{args.model}' has no tokenizer vocabulary ({export.VOCABULARY_FILE}; "
            "`keras-mm export` writes it): pass --config with the data.text_encoder the "
            "model was trained with.")
    return captions.load_text_encoder(config).tokenize(args.captions)


def sample_saved_model(args, config=None):
    import numpy as np
    import tensorflow as tf

    try:
        sampler = tf.saved_model.load(args.model)
    except (OSError, ValueError) as error:
        raise CommandError(f"Could not load the SavedModel '{args.model}': {error}") from error
    if not hasattr(sampler, "sample") or not hasattr(sampler, "metadata"):
        raise CommandError(
            f"'{args.model}' is not a keras_mm sampler (no sample/metadata endpoints); write "
            "one with keras_mm.export_sampler or `keras-mm export`."
        )
    metadata = {key: value.numpy() for key, value in sampler.metadata().items()}
    if args.num_steps is not None and args.num_steps != int(metadata["num_steps"]):
        raise CommandError(
            f"This SavedModel samples in {int(metadata['num_steps'])} steps; got "
            f"--num-steps {args.num_steps}. Re-export it with the steps you want, or drop "
            "--num-steps."
        )
    seed = tf.constant([args.seed, 0], tf.int32)
    text = int(metadata.get("text_dim", -1)) >= 0
    if text and args.captions is None:
        raise CommandError("This model is text-to-image: pass --captions (or "
                           "--captions-file).")
    if not text and args.captions is not None:
        raise CommandError("This model does not take captions: pass --labels or "
                           "--num-samples.")
    try:
        if text and hasattr(sampler, "sample_from_tokens"):
            tokens = saved_model_tokens(args, int(metadata["sequence_length"]), config)
            images = sampler.sample_from_tokens(
                token_ids=tf.constant(tokens["token_ids"]),
                padding_mask=tf.constant(tokens["padding_mask"]), seed=seed)
        elif text:
            if config is None:
                raise CommandError(
                    "This SavedModel was exported without its text encoder: pass --config "
                    "with the data.text_encoder the model was trained with.")
            condition = captions.load_text_encoder(config).encode(args.captions)
            images = sampler.sample(text_embeddings=tf.constant(condition["text_embeddings"]),
                                    text_mask=tf.constant(condition["text_mask"]), seed=seed)
        elif metadata["num_classes"] >= 0:
            if args.labels is None:
                raise CommandError(
                    f"This model is class-conditional ({metadata['num_classes']} classes): "
                    "pass --labels, e.g. --labels 0,1,2."
                )
            images = sampler.sample(labels=tf.constant(args.labels, tf.int32), seed=seed)
        else:
            if args.labels is not None:
                raise CommandError("This model is unconditional: pass --num-samples, not "
                                   "--labels.")
            if args.num_samples is None:
                raise CommandError("This model is unconditional: pass --num-samples N.")
            images = sampler.sample(batch_size=tf.constant(args.num_samples, tf.int32),
                                    seed=seed)
    except tf.errors.InvalidArgumentError as error:
        # The graph's own input checks: show their message, not the graph trace.
        found = re.search(r"assertion failed: \[([^\]]*)\]", error.message)
        raise CommandError(found.group(1) if found else error.message) from None
    return np.asarray(images)
