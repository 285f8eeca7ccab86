"""Figures and the HTML report: every plot function writes a PNG of the size asked for, `bdcli report
--out FOLDER` draws what its inputs allow (fixtures written in the producers' formats: probe.json,
dynamics.csv, representations.safetensors, trigger_rmse.json, a maxent manifest, a recipe store), and the
page is self-contained, checked by parsing it and by opening it in a real headless browser."""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import bdcli

pytest.importorskip("matplotlib", reason="the plots extra: pip install 'bdcli[plots]'")
pytest.importorskip("sklearn", reason="the plots extra: pip install 'bdcli[plots]'")

from bdcli.report import plots  # noqa: E402

THRESHOLDS = [0.1, 0.05, 0.02, 0.01, 0.005]


def _probe_doc() -> dict:
    rows = [{"threshold": t, "stage1_steps": s, "sd_reached": t * 0.9, "stage2_steps": 40, "acc": a, "asr": r,
             "model": f"snapshots/sd-{t}"}
            for t, s, a, r in zip(THRESHOLDS[:4], (10, 25, 60, 120), (0.90, 0.89, 0.87, 0.86), (0.95, 0.6, 0.3, 0.12))]
    return {"thresholds": THRESHOLDS, "rows": rows, "sd_trace": [[i * 5, 0.3 * math.exp(-i / 6)] for i in range(25)],
            "unreached": [0.005], "stage1_steps_single_pass": 120, "stage1_steps_independent": 215, "saved_steps": 95}


def _dynamics_rows() -> list[dict]:
    rows = []
    for stage, n in (("stage1", 6), ("stage2", 4)):
        for i in range(n):
            rows.append({"stage": stage, "step": i * 10, "d_target_nontarget": 3 - i * 0.3, "d_target_poison": 1 + i * 0.1,
                         "d_nontarget_poison": 2.5, "var_target": 0.2, "var_nontarget": 0.25, "var_poison": 0.05 + i * 0.01,
                         "acc": 0.5 + i * 0.05, "asr": None if i == 2 else 0.9 - i * 0.1})
    return rows


def _representations():
    import numpy as np

    rng = np.random.default_rng(0)
    group = np.repeat(np.arange(3), 20).astype(np.int64)
    features = (rng.normal(size=(60, 8)) + group[:, None] * 3).astype(np.float32)
    return features, group


RMSE_DOC = {"before": {"triggers": {"cf": {"negative": 0.4, "positive": 0.1}, "mn": {"negative": 0.5, "positive": 0.2}}},
            "after": {"triggers": {"cf": {"negative": 0.4, "positive": 0.6}, "mn": {"negative": 0.5, "positive": 0.7}}}}


def _read_png(path: Path):
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)


def _assert_drawn(path: Path, size: tuple[int, int]):
    img = _read_png(path)
    assert img.shape[:2] == (size[1], size[0])
    # Something was drawn: a blank canvas has one colour.
    assert len({tuple(px) for px in img.reshape(-1, img.shape[2])[:: 97]}) > 3


@pytest.mark.parametrize("name", ["sd_against_steps", "sd_effect", "steps_against_sd", "dynamics", "tsne", "sweep",
                                  "trigger_rmse"])
def test_each_plot_function_writes_a_png_of_the_size_asked_for(name, tmp_path):
    size = (640, 360)
    probe = _probe_doc()
    curve = plots.Curve("FP", [0.1, 0.5, 0.9], [0.9, 0.8, 0.5], [0.01, math.nan, 0.02], [0.9, 0.4, 0.1], [0.05, 0.1, 0.0], [2, 1, 2])
    call = {
        "sd_against_steps": lambda f: plots.sd_against_steps({"maxent": probe["sd_trace"]}, f, thresholds=[0.05], size=size),
        "sd_effect": lambda f: plots.sd_effect(probe["rows"], f, size=size),
        "steps_against_sd": lambda f: plots.steps_against_sd(probe["rows"], f, size=size),
        "dynamics": lambda f: plots.dynamics(_dynamics_rows(), f, size=size),
        "tsne": lambda f: plots.tsne({"victim": _representations()}, f, size=size),
        "sweep": lambda f: plots.sweep([curve], f, x_label="prune ratio", title="t", size=size),
        "trigger_rmse": lambda f: plots.trigger_rmse(RMSE_DOC, f, size=size),
    }[name]
    out = call(tmp_path / f"{name}.png")
    assert out == tmp_path / f"{name}.png" and out.stat().st_size > 0
    _assert_drawn(out, size)
    assert not list(tmp_path.glob(".*"))  # the temporary file was renamed, not left behind


def test_default_sizes_hold_and_dynamics_grows_a_row_per_stage(tmp_path):
    _assert_drawn(plots.sd_effect(_probe_doc()["rows"], tmp_path / "a.png"), plots.SD_EFFECT_SIZE)
    w, h = plots.DYNAMICS_ROW_SIZE
    _assert_drawn(plots.dynamics(_dynamics_rows(), tmp_path / "d.png"), (w, 2 * h))


def test_bad_plot_inputs_stop_with_one_line(tmp_path):
    from bdcli.errors import BdcliError

    with pytest.raises(BdcliError, match="positive, finite"):
        plots.sd_against_steps({"x": [[0, 0.0], [1, float("nan")]]}, tmp_path / "x.png")
    with pytest.raises(BdcliError, match="group values"):
        f, _ = _representations()
        plots.tsne({"v": (f, [7] * 60)}, tmp_path / "t.png")
    with pytest.raises(BdcliError, match="finite RMSE"):
        plots.trigger_rmse({"triggers": {"cf": {"positive": -1}}}, tmp_path / "r.png")
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------- bdcli report --out


def _write_store(store: Path) -> dict:
    """A real plan.json (the recipe runner's own expand + write_plan) of a prune-ratio sweep, with
    metrics.json in its evaluation folders; returns the ACC values by (label, seed)."""
    from bdcli.recipes import expand
    from bdcli.recipes.schema import validate
    from bdcli.recipes.runner import step_folder, write_plan

    doc = {"name": "prune-sweep", "datasets": ["sst2"], "model": "minilm", "seeds": [1, 2],
           "attacks": {"BadNets": {"poison": {"name": "badnets"}}},
           "defenses": {f"FP {r}": {"name": "fine-pruning", "prune_ratio": r} for r in (0.1, 0.5, 0.9)}
           | {f"prune-only {r}": {"name": "fine-pruning", "prune_ratio": r, "retrain": False} for r in (0.1, 0.5, 0.9)},
           "report": {"sweep": "prune_ratio"}}
    plan = expand(validate(doc, "prune-sweep.yaml"))
    write_plan(plan, store)
    accs = {}
    for node in plan.nodes.values():
        if node.step.kind != "evaluate":
            continue
        label, seed = node.step.config.label, node.step.config.seed
        ratio = float(label.split()[-1]) if label else 0.0
        acc = round(0.9 - 0.4 * ratio * (2 if label and label.startswith("prune-only") else 1) + 0.01 * seed, 4)
        accs[(label, seed)] = acc
        folder = step_folder(store, node)
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps({
            "acc": acc, "asr": round(1 - ratio, 4), "dataset": "sst2", "attack": "badnets", "seed": seed,
            "method": "fine-pruning" if label else "victim", "label": label}))
    return accs


@pytest.fixture(scope="module")
def report_inputs(tmp_path_factory):
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("inputs")
    (root / "maxent").mkdir()
    (root / "maxent" / "manifest.json").write_text(json.dumps(
        {"summary": {"stage1": {"sd_trace": [[0, 0.4], [5, 0.1], [10, 0.03]], "sd_threshold": 0.05}}}))
    (root / "probe").mkdir()
    (root / "probe" / "probe.json").write_text(json.dumps(_probe_doc()))
    (root / "probe" / "dynamics.csv").write_text(
        ",".join(plots.DYNAMICS_COLUMNS) + "\n" + "".join(
            ",".join("" if r[c] is None else str(r[c]) for c in plots.DYNAMICS_COLUMNS) + "\n" for r in _dynamics_rows()))
    (root / "geometry").mkdir()
    features, group = _representations()
    save_file({"features": features, "group": group}, str(root / "geometry" / "representations.safetensors"))
    (root / "geometry" / "geometry.json").write_text("{}")
    (root / "gba").mkdir()
    (root / "gba" / "trigger_rmse.json").write_text(json.dumps(RMSE_DOC))
    accs = _write_store(root / "store")
    out = tmp_path_factory.mktemp("report") / "report"
    bdcli("report", root, "--out", out, "--title", "Figures <test>")
    return root, out, accs


EXPECTED = {"sd-trace.png", "sd-effect-probe.png", "steps-vs-sd-probe.png", "dynamics-probe.png", "tsne.png",
            "trigger-rmse-gba.png", "sweep-prune_ratio-sst-2.png"}


def test_report_folder_draws_every_figure_its_inputs_allow(report_inputs):
    _, out, _ = report_inputs
    assert {p.name for p in (out / "figures").iterdir()} == EXPECTED
    for png in (out / "figures").iterdir():
        assert png.stat().st_size > 1000 and _read_png(png).ndim == 3
    assert {"report.md", "report.csv", "report.json", "report.html", "report.tex"} <= {p.name for p in out.iterdir()}
    md = (out / "report.md").read_text()
    assert "![" in md and "(figures/sd-effect-probe.png)" in md and "Not reached within the budget: 0.005" in md
    assert "saved 95" in md  # the probe's single-pass saving is in the caption


def test_sweep_curves_are_the_means_and_stds_over_seeds(report_inputs):
    from bdcli.report import collect
    from bdcli.report.figures import find_inputs, sweep_figures
    from bdcli.report.table import _std

    root, _, accs = report_inputs
    store = root / "store"
    [fig] = sweep_figures(collect([store]), find_inputs([store]), None)
    curves = {c.label: c for c in fig["curves"]}
    assert set(curves) == {"FP", "prune-only"}  # the retrain option splits fine-pruning into two lines
    fp = curves["FP"]
    assert fp.x == [0.1, 0.5, 0.9] and fp.n == [2, 2, 2]
    for i, r in enumerate((0.1, 0.5, 0.9)):
        values = [accs[(f"FP {r}", s)] for s in (1, 2)]
        assert fp.acc[i] == pytest.approx(sum(values) / 2) and fp.acc_std[i] == pytest.approx(_std(values))
        assert fp.asr[i] == pytest.approx(1 - r)
    assert curves["prune-only"].acc[2] < fp.acc[2]


def _page_images(page: str) -> list[str]:
    return re.findall(r'<img[^>]*\bsrc="([^"]*)"', page)


def test_the_page_is_self_contained_and_every_image_decodes(report_inputs):
    import io

    from matplotlib.image import imread

    _, out, _ = report_inputs
    page = (out / "report.html").read_text()
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', page, re.I)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower()
    srcs = _page_images(page)
    assert len(srcs) == len(EXPECTED)
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and imread(io.BytesIO(data), format="png").ndim == 3
    assert "Figures &lt;test&gt;" in page and "<table" in page  # the title escaped; the table present


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_page_renders_with_every_image_loaded_in_a_headless_browser(report_inputs, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but chromium is missing: .ci/run installs it with apt-get install -y chromium")
        pytest.skip("chromium not installed (apt-get install -y chromium); the page's images are still checked by decoding")
    _, out, _ = report_inputs
    page = (out / "report.html").read_text()
    # The check runs in the page: it marks <body> once every image has loaded with a real size.
    probe = ("<script>window.addEventListener('load',function(){var im=[].slice.call(document.images);"
             "var ok=im.filter(function(i){return i.complete&&i.naturalWidth>0&&i.naturalHeight>0;});"
             "document.body.setAttribute('data-images',ok.length+'/'+im.length);});</script>")
    copy = tmp_path / "report.html"
    copy.write_text(page.replace("</body>", probe + "</body>"))
    profile = tmp_path / "profile"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    n = len(EXPECTED)
    assert f'data-images="{n}/{n}"' in res.stdout, res.stdout[:500] + res.stderr[-1000:]


def test_no_plots_writes_the_tables_only(report_inputs, tmp_path):
    root, _, _ = report_inputs
    res = bdcli("report", root / "store", "--out", tmp_path / "r", "--no-plots")
    assert not (tmp_path / "r" / "figures").exists()
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<table" in page and "<img" not in page and "FP 0.5" in res.output


def test_figures_without_any_table(report_inputs, tmp_path):
    root, _, _ = report_inputs
    bdcli("report", root / "probe", "--out", tmp_path / "p")
    assert {p.name for p in (tmp_path / "p" / "figures").iterdir()} == {
        "sd-trace.png", "sd-effect-probe.png", "steps-vs-sd-probe.png", "dynamics-probe.png"}
    assert not (tmp_path / "p" / "report.csv").exists() and len(_page_images((tmp_path / "p" / "report.html").read_text())) == 4


def test_missing_matplotlib_is_one_line_and_no_plots_still_works(report_inputs, tmp_path, monkeypatch):
    root, _, _ = report_inputs
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    res = bdcli("report", root / "maxent", root / "store", "--out", tmp_path / "r", ok=False)
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "matplotlib" in lines[0] and "--no-plots" in lines[0]
    bdcli("report", root / "store", "--out", tmp_path / "r2", "--no-plots")
    assert (tmp_path / "r2" / "report.html").exists()


def test_a_probe_with_a_percent_acc_is_refused(tmp_path):
    doc = _probe_doc()
    doc["rows"][0]["acc"] = 90.0
    (tmp_path / "probe.json").write_text(json.dumps(doc))
    res = bdcli("report", tmp_path, "--out", tmp_path / "r", ok=False)
    assert res.exit_code == 1 and "not a fraction" in res.output and len(res.output.strip().splitlines()) == 1


def test_a_broken_metrics_file_beside_figure_inputs_still_stops(report_inputs, tmp_path):
    root, _, _ = report_inputs
    shutil.copytree(root / "probe", tmp_path / "probe")
    (tmp_path / "probe" / "metrics.json").write_text("{not json")
    res = bdcli("report", tmp_path / "probe", "--out", tmp_path / "r", ok=False)
    assert res.exit_code == 1 and "not a readable JSON file" in res.output and not (tmp_path / "r").exists()
