"""The training signals of a digits distillation, drawn as a small SVG for the README.

Distills an 8-step student from a digits teacher twice, with the alternating method (its
`moment_gap` in `History`) and the instant method (its `instant_objective`), both with their
defaults but the warmup (`--warmup-steps`; `--learning-rate` overrides the default 1e-4),
and measures each student's Fréchet distance (`DigitsFeatures`, 500 samples, fixed seed)
every `--eval-every` steps, as `make demo` does. Writes every logged value to `--csv`
(method, step, metric, value: the metrics are means over the `--log-every` steps before
`step`) and draws three panels to `--out`: the moment gap, the eq. 10 estimate and both
students' FD over the steps, beside the teacher's FD at `--teacher-steps`. No plotting
library: the SVG is written by hand (a few KB).

    KERAS_BACKEND=torch python benchmarks/curves.py [--teacher teacher.keras]
        [--steps 1000] [--eval-every 100] [--out docs/training_signals.svg] [--csv curves.csv]
    python benchmarks/curves.py --from-csv curves.csv --out docs/training_signals.svg

Without `--teacher`, a teacher is trained first (`fit(images, labels, batch_size=128,
epochs=150)`, about 2,100 steps). With `--from-csv`, only the figure is redrawn.
"""

import argparse
import csv
import math
import os
import sys
import time

COLORS = {"alternating": "#1f77b4", "instant": "#d62728", "teacher": "#555555"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=None, help="a saved teacher (.keras, with Adam)")
    parser.add_argument("--steps", type=int, default=1000, help="fit steps per student")
    parser.add_argument("--log-every", type=int, default=20, help="steps per logged mean")
    parser.add_argument("--eval-every", type=int, default=100, help="steps between FDs")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="peak learning rate (default: the library's)")
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--out", default="docs/training_signals.svg")
    parser.add_argument("--csv", default="curves.csv", help="the logged values")
    parser.add_argument("--from-csv", default=None, help="only redraw the figure from this")
    parser.add_argument("--teacher-steps", type=int, nargs="+", default=[8, 256],
                        help="the teacher's FD at these sampling steps, for reference")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------- measuring
def distill_and_log(teacher, method, images, labels, features, args):
    """One 8-step student; returns rows (method, step, metric, value)."""
    import keras

    import keras_mm
    from keras_mm.callbacks import FIDCallback
    from keras_mm.datasets import infinite_batches

    distiller = keras_mm.MomentMatchingDistiller(teacher, num_steps=8, method=method,
                                                 seed=args.seed)
    distiller.compile(learning_rate=args.learning_rate, warmup_steps=args.warmup_steps)
    fid = FIDCallback(reference_data=images, num_samples=500, every_n_steps=args.eval_every,
                      num_steps=8, seed=1234, labels=10, feature_extractor=features, verbose=0)
    rows = []

    def record(epoch, logs):
        step = (epoch + 1) * args.log_every
        for name in ("moment_gap", "instant_objective", "generator_loss", "instant_loss"):
            if name in logs:
                rows.append((method, step, name, float(logs[name])))

    start = time.time()
    distiller.fit(infinite_batches(images, labels, batch_size=128, seed=args.seed + 1),
                  steps_per_epoch=args.log_every, epochs=args.steps // args.log_every,
                  verbose=0, callbacks=[fid, keras.callbacks.LambdaCallback(on_epoch_end=record)])
    print(f"{method}: {(time.time() - start) / 60:.1f} min, FD "
          + " ".join(f"{e['step']}:{e['fid']:.2f}" for e in fid.evaluations), flush=True)
    rows += [(method, e["step"], "fid", float(e["fid"])) for e in fid.evaluations]
    return rows


def measure(args):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import keras
    import numpy as np

    import keras_mm
    from keras_mm import metrics
    from keras_mm.datasets import load_digits

    keras.utils.set_random_seed(args.seed)
    images, labels = load_digits()
    features = metrics.DigitsFeatures()
    if args.teacher:
        teacher = keras.saving.load_model(args.teacher)
    else:
        teacher = keras_mm.DiffusionModel(keras_mm.UViT.from_preset("uvit_digits"),
                                          seed=args.seed)
        teacher.compile()
        teacher.fit(images, labels, batch_size=128, epochs=150, verbose=0)
    rows = []
    for num_steps in args.teacher_steps:  # as the students': 500 samples, seed 1234
        evaluator = metrics.Evaluator(reference_data=images, num_samples=500,
                                      num_steps=num_steps, seed=1234,
                                      labels=np.arange(500) % 10, feature_extractor=features)
        rows.append(("teacher", num_steps, "fid", float(evaluator.evaluate(teacher)["fid"])))
        print(f"teacher {num_steps} steps: FD {rows[-1][3]:.2f}", flush=True)
    for method in ("alternating", "instant"):
        rows += distill_and_log(teacher, method, images, labels, features, args)
    return rows


def write_csv(rows, path):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["method", "step", "metric", "value"])
        writer.writerows(rows)


def read_csv(path):
    with open(path, newline="") as file:
        return [(r["method"], int(r["step"]), r["metric"], float(r["value"]))
                for r in csv.DictReader(file)]


# ---------------------------------------------------------------------------- drawing
def nice_ticks(low, high, count=4):
    """About `count` round tick values covering [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + 1e-9 * step:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def panel_svg(x0, y0, width, height, title, series, hlines=()):
    """One line chart at (x0, y0): series [(label, color, xs, ys)], hlines [(y, label)]."""
    left, bottom, top = 44, 30, 22
    plot_w, plot_h = width - left - 8, height - bottom - top
    xs_all = [x for _, _, xs, _ in series for x in xs]
    ys_all = [y for _, _, _, ys in series for y in ys] + [y for y, _ in hlines]
    x_ticks = nice_ticks(0, max(xs_all))
    y_ticks = nice_ticks(min(0.0, min(ys_all)), max(ys_all))

    def px(x):
        return x0 + left + plot_w * (x - x_ticks[0]) / (x_ticks[-1] - x_ticks[0])

    def py(y):
        return y0 + top + plot_h * (1 - (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]))

    out = [(f'<text x="{x0 + left + plot_w / 2:.0f}" y="{y0 + 14}" text-anchor="middle" '
            f'font-weight="bold">{title}</text>')]
    for y in y_ticks:
        out.append(f'<line x1="{x0 + left}" x2="{x0 + left + plot_w}" y1="{py(y):.1f}" '
                   f'y2="{py(y):.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x0 + left - 4}" y="{py(y) + 4:.1f}" text-anchor="end">'
                   f'{y:g}</text>')
    for x in x_ticks:
        out.append(f'<text x="{px(x):.1f}" y="{y0 + top + plot_h + 14}" '
                   f'text-anchor="middle">{x:g}</text>')
    out.append(f'<text x="{x0 + left + plot_w / 2:.0f}" y="{y0 + height - 2}" '
               'text-anchor="middle">training step</text>')
    out.append(f'<rect x="{x0 + left}" y="{y0 + top}" width="{plot_w}" height="{plot_h}" '
               'fill="none" stroke="#888"/>')
    for index, (y, label) in enumerate(hlines):
        out.append(f'<line x1="{x0 + left}" x2="{x0 + left + plot_w}" y1="{py(y):.1f}" '
                   f'y2="{py(y):.1f}" stroke="{COLORS["teacher"]}" stroke-dasharray="4 3"/>')
        below = 12 if index % 2 else -3  # labels of close lines on either side of them
        out.append(f'<text x="{x0 + left + plot_w - 3}" y="{py(y) + below:.1f}" text-anchor="end" '
                   f'fill="{COLORS["teacher"]}">{label}</text>')
    for index, (label, color, xs, ys) in enumerate(series):
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
        out.append(f'<polyline points="{points}" fill="none" stroke="{color}" '
                   'stroke-width="1.6"/>')
        if len(series) > 1:
            out.append(f'<text x="{x0 + left + 6}" y="{y0 + top + 14 + 13 * index}" '
                       f'fill="{color}">{label}</text>')
    return out


def figure_svg(rows, panel_width=300, panel_height=210):
    """Three panels: moment_gap (alternating), instant_objective (instant), FD of both."""

    def series(method, metric):
        points = sorted((step, value) for m, step, name, value in rows
                        if m == method and name == metric)
        return [p[0] for p in points], [p[1] for p in points]

    teacher = {step: value for m, step, name, value in rows if m == "teacher"}
    panels = [
        ("moment_gap (alternating)", [("", COLORS["alternating"],
                                       *series("alternating", "moment_gap"))], []),
        ("instant_objective (instant)", [("", COLORS["instant"],
                                          *series("instant", "instant_objective"))], []),
        ("FD of the 8-step student",
         [("alternating", COLORS["alternating"], *series("alternating", "fid")),
          ("instant", COLORS["instant"], *series("instant", "fid"))],
         [(value, f"teacher, {steps} steps") for steps, value in sorted(teacher.items())]),
    ]
    width, height = panel_width * len(panels), panel_height
    body = []
    for index, (title, lines, hlines) in enumerate(panels):
        body += panel_svg(index * panel_width, 0, panel_width, panel_height, title, lines,
                          hlines)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">\n'
            f'<rect width="{width}" height="{height}" fill="white"/>\n'
            + "\n".join(body) + "\n</svg>\n")


def main(argv=None):
    args = parse_args(argv)
    if args.from_csv:
        rows = read_csv(args.from_csv)
    else:
        rows = measure(args)
        write_csv(rows, args.csv)
    with open(args.out, "w") as file:
        file.write(figure_svg(rows))
    print(f"wrote {args.out} ({os.path.getsize(args.out)} bytes)")


if __name__ == "__main__":
    main()
