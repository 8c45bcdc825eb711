"""benchmarks/curves.py draws the README's training-signal figure from its CSV (no training)."""

import importlib.util
import os
from xml.etree import ElementTree

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_curves():
    spec = importlib.util.spec_from_file_location(
        "curves", os.path.join(ROOT, "benchmarks", "curves.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.one_backend("torch")  # plain Python: no backend involved
def test_figure_from_csv_places_points_on_the_axes(tmp_path):
    curves = load_curves()
    rows = [("teacher", 256, "fid", 3.0),
            ("alternating", 20, "moment_gap", 0.4), ("alternating", 40, "moment_gap", 0.1),
            ("instant", 20, "instant_objective", 2.0), ("instant", 40, "instant_objective", 0.5),
            ("alternating", 40, "fid", 4.0), ("instant", 40, "fid", 6.0)]
    path = str(tmp_path / "curves.csv")
    curves.write_csv(rows, path)
    assert curves.read_csv(path) == rows
    assert curves.nice_ticks(0, 0.37) == [0, 0.1, 0.2, 0.3, 0.4]
    svg = ElementTree.fromstring(curves.figure_svg(rows, panel_width=300, panel_height=210))
    lines = [e for e in svg.iter() if e.tag.endswith("polyline")]
    assert len(lines) == 4  # moment gap, instant objective, two FD curves
    gap = [tuple(map(float, p.split(","))) for p in lines[0].get("points").split()]
    # The gap's y axis runs 0 .. 0.4 over the plot's 158 px from y = 22: 0.1 sits 3/4 down.
    assert gap[1][1] == pytest.approx(22 + 158 * 0.75, abs=0.1)
    assert gap[0][1] == pytest.approx(22, abs=0.1)
    assert gap[1][0] > gap[0][0]
