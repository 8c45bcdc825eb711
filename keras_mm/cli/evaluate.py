"""`keras-mm evaluate`: a model's FD/FID, precision, recall and class accuracy, as a table."""

import argparse
import json
import os
import re
import time

from keras_mm.cli.options import (
    CommandError,
    add_config_arguments,
    check_keras_file,
    config_epilog,
    parse_int_list,
    print_config,
    resolve_model_config,
    wrap,
)


def add_command(subparsers):
    parser = subparsers.add_parser(
        "evaluate",
        help="FD/FID, precision, recall and class accuracy of a model's samples.",
        description=wrap("Sample eval.num_samples images from MODEL (a teacher, a generator or a "
        "distiller .keras file) with fixed seeds and balanced labels (captions configs: the "
        "captions of the evaluation's reference images), and compare them with "
        "eval.num_reference real images in the feature space of eval.feature_extractor: "
        "Fréchet distance (FID with Inception-v3), improved precision and recall, and class "
        "accuracy. Prints a markdown table, one row per --num-steps, and writes it as "
        "JSON."),
        epilog=config_epilog(("data", "eval")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, default=None, model_fallback="digits")
    parser.add_argument("--model", required=True, help=".keras file to evaluate.")
    parser.add_argument("--num-steps", type=parse_int_list,
                        help="comma-separated sampling steps, one table row each, e.g. "
                        "8,64,256 (default: k for a distiller or generator, "
                        "eval.teacher_num_steps for a teacher).")
    parser.add_argument("--num-samples", type=int,
                        help="samples per row (eval.num_samples).")
    parser.add_argument("--out", help="JSON file to write (default: MODEL with "
                        "_evaluation.json in place of .keras).")
    parser.add_argument("--custom-module", action="append", default=[],
                        help="module defining the network's custom layers (repeatable).")
    parser.set_defaults(run=run)


def run(args):
    config = resolve_model_config(args, "digits", (("num_samples", "num_samples"),), "eval")
    if args.print_config:
        return print_config(config)
    import keras

    from keras_mm import training
    from keras_mm.training.runs import check_runnable

    check_runnable(config)
    if config["model"]["network"] == "sd3":
        raise CommandError("evaluate does not score Stable Diffusion 3 runs yet (FID of decoded "
                           "images); use `keras-mm sample --captions ...` to look at them.")
    check_keras_file(args.model, "--model")
    model = training.load_model(args.model, args.custom_module, allow_distiller=True)
    network = getattr(model, "generator", model)
    training.check_model_fits_data(network, config)
    # Caption embeddings are cached beside the model (its run directory).
    captions = training.captions.caption_data(config, network,
                                              os.path.dirname(os.path.abspath(args.model)))
    fid, extractor = evaluator(config, captions)
    rows = []
    for steps in args.num_steps or [training.default_num_steps(model, config)]:
        fid.num_steps = steps
        start = time.time()
        results = fid.evaluate(model)
        rows.append({"num_steps": steps, **results, "seconds": time.time() - start})
    evaluation = config["eval"]
    report = {
        "model": args.model,
        "backend": keras.backend.backend(),
        "feature_extractor": extractor.name,
        "num_samples": evaluation["num_samples"],
        "guidance_scale": evaluation["guidance_scale"],
        "rows": rows,
    }
    print(evaluation_table(report))
    out = args.out or re.sub(r"\.keras$", "", args.model) + "_evaluation.json"
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    print(f"Wrote {out}")
    return 0


def evaluator(config, captions):
    """The FIDCallback that samples and scores a model, and its feature extractor."""
    from keras_mm.callbacks import FIDCallback
    from keras_mm.configs import ConfigError
    from keras_mm.training import feature_extractor, reference_images

    evaluation = config["eval"]
    extras = ["precision_recall"] if evaluation["precision_recall"] else []
    wants_accuracy = evaluation["class_accuracy"] and config["data"]["num_classes"] is not None
    extractor = feature_extractor(config, classifier_head=wants_accuracy)
    if wants_accuracy and extractor.has_classifier:
        extras.append("class_accuracy")
    try:
        fid = FIDCallback(
            reference_data=reference_images(config, captions),
            num_samples=evaluation["num_samples"],
            seed=evaluation["seed"],
            labels=config["data"]["num_classes"],
            condition=(captions.eval_condition(evaluation["num_samples"])
                       if captions is not None else None),
            feature_extractor=extractor,
            batch_size=evaluation["batch_size"],
            guidance_scale=evaluation["guidance_scale"],
            extra_metrics=extras,
            verbose=0,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return fid, extractor


def evaluation_table(report):
    """The report as a markdown table, one row per number of steps."""
    distance = "FID" if report["feature_extractor"] in ("fid_inception", "inception_v3") else "FD"
    columns = [("fid", f"{distance} ({report['feature_extractor']})"),
               ("precision", "precision"), ("recall", "recall"),
               ("class_accuracy", "class accuracy")]
    columns = [(key, title) for key, title in columns if key in report["rows"][0]]
    lines = [
        f"{report['model']}: {report['num_samples']} samples, backend {report['backend']}",
        "",
        "| steps | " + " | ".join(title for _, title in columns) + " | seconds |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for row in report["rows"]:
        values = " | ".join(f"{row[key]:.4f}" for key, _ in columns)
        lines.append(f"| {row['num_steps']} | {values} | {row['seconds']:.1f} |")
    return "\n".join(lines)
