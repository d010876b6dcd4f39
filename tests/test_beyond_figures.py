"""The figures of docs/results.md §2b and §4, drawn from the committed study tables: each names every
algorithm in a legend outside its panels, and writes its PNG and SVG."""

import importlib.util
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from splitfed.analysis import clients, load_groups
from splitfed.analysis.claims import Claims

ROOT = Path(__file__).resolve().parents[1]
THREE = ("MiniBatch-SFL", "SFL-V2", "FedAvg (FL)")


def _script(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _legend_labels(fig) -> list[str]:
    return [text.get_text() for legend in fig.legends for text in legend.get_texts()]


def test_the_vit_cut_figure_draws_the_three_algorithms_and_says_what_its_bars_are(tmp_path):
    vit = _script("experiments/beyond/vit_tables.py")
    fig = vit.draw_figure(load_groups(vit.STUDY), plt)
    labels = _legend_labels(fig)
    plt.close(fig)
    for name in THREE:
        assert any(label.startswith(name) for label in labels), (name, labels)
    assert "bars: min–max over 2 seeds (0, 1); markers: mean" in labels
    assert {"p = 0", "p = 0.8", "p = 1"} <= set(labels)
    assert not any(ax.get_legend() for ax in fig.axes)  # no legend over the data
    written = vit.figure(vit.STUDY, tmp_path)
    assert [p.name for p in written] == [f"{vit.FIGURE}.png", f"{vit.FIGURE}.svg"]
    assert all(p.stat().st_size > 0 for p in written)


def test_the_many_clients_figure_has_a_panel_per_p_and_n_and_its_legend_below(tmp_path, monkeypatch):
    drawn = []
    save = clients.save_figure
    monkeypatch.setattr(
        clients, "save_figure", lambda fig, stem, dpi: drawn.append(fig) or save(fig, stem, dpi)
    )
    groups = load_groups(ROOT / "experiments/beyond/results/many-clients")
    clients.clients_sections(groups, tmp_path, Claims(), plt)
    (fig,) = drawn
    assert len(fig.axes) == 6  # p ∈ {0.8, 1} × N ∈ {10, 100, 1000}
    for ax in fig.axes:
        assert ax.get_legend() is None
        assert 2 <= len([line for line in ax.get_lines() if line.get_linewidth() < 2]) <= 4
    labels = _legend_labels(fig)
    for name in THREE:
        assert any(label.startswith(name) for label in labels), (name, labels)
    assert "MiniBatch-SFL, client lr 0.01, server lr 0.05" in labels
    assert (tmp_path / "clients_fmnist_cnn4.png").is_file() and (
        tmp_path / "clients_fmnist_cnn4.svg"
    ).is_file()
