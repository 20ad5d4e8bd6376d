"""`dlcv report` built from a tiny set of real runs (P1 model A, P3 model A, BYOL + two transfer settings),
and `dlcv viz arch`."""
import base64
import json
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from conftest import FIGURES, REPO, seg_cfg, small_classify_cfg, ssl_cfg
from dlcv import config, task_registry
from dlcv.cli import main
from dlcv.engine.trainer import Trainer
from dlcv.pipelines import transfer
from dlcv.tasks import classify, segment, ssl

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(synth_root, tmp_path_factory):
    base = tmp_path_factory.mktemp("report_runs")
    p1 = small_classify_cfg(synth_root / "p1_data", **{  # the report's model A (~6 images/s on a CPU core)
        "model.name": "resnet50_cifar", "model.options": "{}", "train.epochs": 2, "data.limit_train": 32,
        "train.batch_size": 16, "data.limit_val": 30, "snapshot.epochs": "[1, 2]", "snapshot.tsne_perplexity": 5, **FIGURES})
    Trainer(classify.ClassifyTask(p1), p1, base / "p1_a").fit()
    p3 = seg_cfg(synth_root / "p3_data", **{"model.name": "fcn32s_vgg16", "model.options": "{fc_channels: 16}",
                                             "train.epochs": 2, "data.limit_train": 8, **FIGURES})
    Trainer(segment.SegmentTask(p3), p3, base / "p3_a").fit()
    p2 = ssl_cfg(synth_root / "p2_data", **{"train.epochs": 2, "data.limit_train": 64, **FIGURES})
    Trainer(ssl.SSLTask(p2), p2, base / "p2_byol").fit()
    finetune = ["data.root=" + str(synth_root / "p2_data"), "model.name=resnet18", "data.image_size=32",
                "train.epochs=1", "train.batch_size=32", "train.precision=fp32", "device=cpu"]
    transfer.run_table(config.load_yaml("p2_finetune"), finetune, None, str(base / "p2_byol" / "backbone.pt"),
                  base / "p2_table", settings="AC")
    return base


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["report", str(runs), "--out", str(out)]) == 0
    return out


def summary(path):
    return json.loads((path / "summary.json").read_text())


def test_every_section_is_there(report):
    text = report.read_text()
    for heading in ("Problem 1: image classification", "1. Architectures of model A and model B",
                    "2. Validation accuracy", "3. PCA of model A", "4. t-SNE", "5. Per-class accuracy",
                    "Problem 2: self-supervised", "1. The BYOL recipe used", "2. Transfer settings A-E",
                    "3. k-NN accuracy", "Problem 3: semantic segmentation", "2. Validation mIoU",
                    "3. Predicted masks", "4. Training curves"):
        assert heading in text, heading


def test_every_figure_is_embedded_and_is_an_image(report):
    images = re.findall(r"src='data:image/png;base64,([^']+)'", report.read_text())
    # architectures 2 x 2, PCA, t-SNE x 2, 3 P1 extras, BYOL curves, P3 mask grid and curves
    assert len(images) >= 13
    for data in images:
        raw = base64.b64decode(data)
        assert raw.startswith(PNG) and len(raw) > 2000


def test_every_number_equals_the_runs_summary(report, runs):
    text = report.read_text()
    p1, p3, byol = summary(runs / "p1_a"), summary(runs / "p3_a"), summary(runs / "p2_byol")
    assert f"{p1['best']['val_acc']:.4f} ({p1['best']['epoch']})" in text
    assert f"{p3['best']['val_miou']:.4f} ({p3['best']['epoch']})" in text
    for iou in p3["per_class_iou"].values():
        assert ("-" if iou is None else f"{iou:.4f}") in text
    assert f"{byol['final']['knn_acc']:.4f}" in text
    for setting in "AC":
        s = summary(runs / "p2_table" / f"setting_{setting}")
        assert re.search(rf"<td>{setting}</td>.*?<td>{s['final']['val_acc']:.4f}</td>", text)
    assert p1["environment"]["torch"] in text and str(p1["wall_time_s"]) in text


def test_missing_runs_are_shown_with_their_command(report):
    text = report.read_text()
    assert "no run of the report&#x27;s model B (efficientnet_v2_l)" in text
    assert "dlcv classify train -c configs/p1_model_b.yaml --out runs/p1_model_b" in text
    assert "dlcv segment train -c configs/p3_model_b.yaml" in text


def test_markdown_twin_links_existing_figures(report):
    md = report.with_suffix(".md")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md.read_text())
    assert len(links) >= 13
    for link in links:
        assert (md.parent / link).stat().st_size > 2000


def test_a_report_on_synthetic_data_says_so_first_with_the_scale(report):
    text = " ".join(report.with_suffix(".md").read_text().split())
    banner = text.index("Synthetic data, scaled down: 5 of these 5 runs trained on the images of")
    assert banner < text.index("Problem 1")
    assert "P1 32 training images of 10 classes, 2 epochs (the course: 20,000 training images of 50 classes)" in text
    assert "P3 8 training tiles of 128 px, 2 epochs (the course: 1,800 training tiles of 512 px)" in text


def test_every_run_comes_with_the_command_that_trains_it_again_from_its_config(report, runs):
    text = report.read_text()
    for run, task in (("p1_a", "classify"), ("p3_a", "segment"), ("p2_byol", "ssl"),
                      ("p2_table/setting_C", "classify")):
        entry = task_registry.task(task)
        name = run.split("/")[-1]
        assert f"dlcv {entry.command} -c {runs / run / 'config.yaml'} --out runs/{name}_again" in text
        saved = config.load_yaml(runs / run / "config.yaml")
        assert entry.load().SCHEMA.resolve(saved) == saved  # config.yaml is the whole recipe


def test_diagrams_are_drawn_at_the_runs_input_size_and_classes(report):
    text = report.read_text()
    assert "dlcv viz arch resnet50_cifar --input-size 32 --num-classes 10 --out FILE" in text
    assert "dlcv viz arch fcn32s_vgg16 --input-size 128 --num-classes 7 --out FILE" in text  # 128 px tiles


def test_scatter_colours_tell_every_one_of_50_classes_apart():
    from dlcv.viz.figures import class_style
    assert len({class_style(c, 50) for c in range(50)}) == 50
    assert len({class_style(c, 10)[0] for c in range(10)}) == 10


def test_not_a_run_directory_is_a_clear_error(tmp_path, capsys):
    assert main(["report", str(tmp_path), "--out", str(tmp_path / "r.html")]) == 2
    assert "neither a run directory" in capsys.readouterr().err


@pytest.mark.skipif(not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")),
                    reason="no Chromium installed")
def test_html_has_no_broken_image_and_fits_1280_px_in_a_browser(report):
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "check_report.py"), str(report)],
                          capture_output=True, text=True, timeout=300)
    checked = json.loads(done.stdout)
    assert checked["broken"] == 0 and checked["page_width"] <= 1280 and done.returncode == 0, checked


def test_viz_arch_draws_blocks_with_shapes(tmp_path):
    from dlcv.viz.arch import build_for_diagram, trace_blocks
    blocks = trace_blocks(build_for_diagram("resnet50_cifar", 50), 32)
    names = [b.name for b in blocks]
    assert names[:2] == ["conv1", "bn1"] and names[-2:] == ["fc", "output"]
    shapes = {b.name: b.out_shape for b in blocks}
    assert shapes["layer1"] == (256, 32, 32) and shapes["layer4"] == (2048, 4, 4) and shapes["output"] == (50,)
    assert next(b.kind for b in blocks if b.name == "layer3") == "6 x Bottleneck"
    seg = {b.name: b.out_shape for b in trace_blocks(build_for_diagram("fcn_resnet50", 7), 512)}
    assert seg["output"] == (7, 512, 512) and seg["backbone.layer4"] == (2048, 64, 64)
    for suffix in ("png", "svg"):
        assert main(["viz", "arch", "efficientnet_v2_l", "--out", str(tmp_path / f"b.{suffix}")]) == 0
    assert Image.open(tmp_path / "b.png").size[1] > 600
    assert (tmp_path / "b.svg").read_text().lstrip().startswith("<?xml")


def test_viz_arch_draws_efficientnet_lite_stages_in_the_order_they_run():
    pytest.importorskip("efficientnet_lite_pytorch")
    from dlcv.viz.arch import build_for_diagram, trace_blocks
    blocks = trace_blocks(build_for_diagram("efficientnet_lite0", 50), 224)
    names = [b.name for b in blocks]
    # the MBConv blocks (a ModuleList the model loops over) sit between the stem and the head
    assert names.index("_bn0") < names.index("_blocks") < names.index("_conv_head") < names.index("_fc")
    blocks_box = next(b for b in blocks if b.name == "_blocks")
    assert blocks_box.kind == "16 x MBConvBlock" and blocks_box.out_shape == (320, 7, 7)
    assert all(b.out_shape is not None for b in blocks)  # nothing "not called in forward"


def test_a_running_run_is_shown_unfinished(runs, tmp_path):
    shutil.copytree(runs / "p1_a", tmp_path / "p1_a", ignore=shutil.ignore_patterns(".lock"))
    state = summary(tmp_path / "p1_a")
    (tmp_path / "p1_a" / "summary.json").write_text(json.dumps({**state, "status": "running"}))
    assert main(["report", str(tmp_path / "p1_a"), "--out", str(tmp_path / "r.html")]) == 0
    assert f"{state['final']['epoch']} (unfinished: running)" in (tmp_path / "r.md").read_text()
