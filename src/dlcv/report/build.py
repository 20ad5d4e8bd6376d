"""The course report, question by question, from run directories: every number is read from a run's
summary.json and printed next to the command that produced it and the run's environment; a question
without its run says so and gives the command that would produce it."""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from PIL import Image

from dlcv import task_registry
from dlcv.data import layouts
from dlcv.data.images import is_image
from dlcv.data.masks import course_tiles
from dlcv.data.synth import is_synthetic
from dlcv.errors import DlcvError
from dlcv.fileio import check_output, starts_with
from dlcv.report import document
from dlcv.report.runs import REPORT_MODELS, Run, Table, collect
from dlcv.viz.arch import architecture_figure

log = logging.getLogger("dlcv")

def _train_command(task: str, recipe: str) -> str:
    return f"dlcv {task_registry.task(task).command} -c configs/{recipe}.yaml --out runs/{recipe}"


MISSING_COMMANDS = {
    ("p1", "A"): _train_command("classify", "p1_model_a"),
    ("p1", "B"): _train_command("classify", "p1_model_b"),
    ("p2", "byol"): _train_command("ssl", "p2_byol"),
    ("p2", "table"): "dlcv ssl table -c configs/p2_finetune.yaml --sl-backbone SL_BACKBONE.pt "
                     "--ssl-backbone runs/p2_byol/backbone.pt --out runs/p2_table",
    ("p3", "A"): _train_command("segment", "p3_model_a"),
    ("p3", "B"): _train_command("segment", "p3_model_b"),
}


def _setting(config: dict, key: str):
    """A run config's dotted key, or "?" where a hand-edited config lacks it."""
    node = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return "?"
        node = node[part]
    return node


def _per_class_iou(run: Run) -> dict:
    iou = run.summary.extras.get("per_class_iou")
    return iou if isinstance(iou, dict) else {}


def fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)


def environment_line(run: Run) -> str:
    env, s = run.summary.environment, run.summary
    made_by = f"; made by: {run.made_by}" if run.made_by else ""
    return (f"{run.path}: {env.get('device_name', '?')} ({env.get('device', '?')}, {env.get('world_size', 1)} "
            f"process(es)), torch {env.get('torch', '?')}, precision {env.get('precision', '?')}, seed "
            f"{s.seed}, wall time {s.wall_time_s} s, git {str(env.get('git_commit'))[:10]}{made_by}; trained again "
            "from its own config by:")


def _provenance(doc: document.Document, runs: list[Run]) -> None:
    for run in runs:
        doc.text(environment_line(run))
        doc.command(run.rerun_command)


def _pick(runs: list[Run], problem: str, role: str) -> Run | None:
    """The best run of a role (several runs of one role: the one with the highest monitored value)."""
    candidates = [r for r in runs if r.problem == problem and r.role == role and r.best is not None]
    return max(candidates, key=lambda r: r.best, default=None)


def _tile_side(run: Run) -> int | None:
    """The side of a segmentation run's training tiles (the first one's), where its data is at hand."""
    d = run.config["data"]
    try:
        folder = layouts.find_split(Path(d["root"] or ""), d.get("train_dir", layouts.AUTO), layouts.TRAIN_NAMES,
                                    "training", "data.train_dir", required=False)
    except DlcvError:
        folder = None
    tiles = [] if folder is None else course_tiles(folder) or sorted((folder / "images").glob("*"))  # pairs
    tile = next((t for t in tiles if is_image(t)), None)
    if tile is None:
        return None
    with Image.open(tile) as image:
        return image.size[0]


def _input_size(run: Run) -> int | None:
    """The side of the images the run's model saw in training."""
    d = run.config["data"]
    if run.task == "segment":
        return d.get("crop_size") or _tile_side(run)
    return d.get("input_size") or d.get("image_size")


def _architectures(doc, runs, problem, arch_dir: Path) -> None:
    """Each role's diagram drawn from the model its run trained: its options, classes and input size."""
    for role in ("A", "B"):
        run = _pick(runs, problem, role)
        name = run.model if run else REPORT_MODELS[(problem, role)]
        options = run.config["model"]["options"] if run else {}
        side, classes = (_input_size(run), run.classes) if run else (None, None)
        path = architecture_figure(name, arch_dir / f"{problem}_{role}_{name}.png", side, classes, options=options)
        source = f"as trained in {run.path}" if run else "the report's model (no run given)"
        flags = "".join(f" {flag} {value}" for flag, value in (("--input-size", side), ("--num-classes", classes))
                        if value)
        doc.figure(path, f"Model {role}: {name}, {source}; `dlcv viz arch {name}{flags} --out FILE`")


def _results_table(doc, runs: list[Run], metric_label: str, extra_columns=()) -> None:
    header = ["role", "run", "model", f"best {metric_label} (epoch)", f"final {metric_label}", "epochs",
              *[c for c, _ in extra_columns]]
    rows = []
    for r in runs:
        final = r.summary.final or {}
        epochs = final.get("epoch") if r.finished else f"{final.get('epoch')} (unfinished: {r.summary.status})"
        rows.append([r.role, r.path.name, r.model, f"{fmt(r.best)} ({r.summary.best_epoch})",
                     fmt(final.get(r.monitor)), epochs, *[fn(r) for _, fn in extra_columns]])
    doc.table(header, rows)


def _missing_roles(doc, runs, problem) -> None:
    for role in ("A", "B"):
        if _pick(runs, problem, role) is None:
            doc.missing(f"no run of the report's model {role} ({REPORT_MODELS[(problem, role)]})",
                        MISSING_COMMANDS[(problem, role)])


def _role_results(doc, runs: list[Run], problem: str, metric: str, extra_columns=()) -> list[Run]:
    """A problem's results table (every run, sorted by role), the runs' commands and environments, and the
    report's models A / B that have no run. Returns the problem's runs."""
    mine = sorted((r for r in runs if r.problem == problem), key=lambda r: (r.role, str(r.path)))
    if mine:
        _results_table(doc, mine, metric, extra_columns)
        doc.text("Commands and environments:")
        _provenance(doc, mine)
    _missing_roles(doc, runs, problem)
    return mine


def _p1(doc, runs: list[Run], arch_dir: Path) -> None:
    doc.heading(1, "Problem 1: image classification")
    doc.heading(2, "1. Architectures of model A and model B")
    _architectures(doc, runs, "p1", arch_dir)
    doc.heading(2, "2. Validation accuracy (over all validation images)")
    p1 = _role_results(doc, runs, "p1", "val_acc")
    model_a = _pick(runs, "p1", "A")
    for title, prefix in (("3. PCA of model A's second-last-layer features (validation set)", "pca_"),
                          ("4. t-SNE of the same features at the snapshot epochs (first, middle, last)", "tsne_")):
        doc.heading(2, title)
        figs = model_a.figures_like(prefix) if model_a else []
        if not figs:
            doc.missing(f"model A's {prefix.strip('_').upper()} figures", MISSING_COMMANDS[("p1", "A")])
        for fig in figs[-1:] if prefix == "pca_" else figs:
            doc.figure(fig, f"{fig.stem.replace('_', ' ')}, model A, {model_a.path}")
    doc.heading(2, "5. Per-class accuracy, confusion matrix and training curves")
    for r in p1:
        for name in ("per_class_accuracy", "confusion_matrix", "training_curves"):
            if name in r.figures:
                doc.figure(r.figures[name], f"{name.replace('_', ' ')}, model {r.role} ({r.model}), {r.path}")


def _p2(doc, runs: list[Run], tables: list[Table]) -> None:
    doc.heading(1, "Problem 2: self-supervised pre-training (BYOL) and transfer")
    byol_runs = [r for r in runs if r.task == "ssl"]
    doc.heading(2, "1. The BYOL recipe used")
    if not byol_runs:
        doc.missing("no BYOL pre-training run", MISSING_COMMANDS[("p2", "byol")])
    for r in byol_runs:
        def c(key: str):  # a hand-edited config may lack a key: shown as "?"
            return _setting(r.config, key)
        doc.table(["key", "value"], [
            ["run", str(r.path)], ["backbone", c("model.name") + " (no pretrained weights)"
                                   if not c("model.weights") else c("model.weights")],
            ["images", f"{c('data.unlabeled_dir')}, cached at {c('data.image_size')} px, views at "
                       f"{c('data.input_size') or c('data.image_size')} px"],
            ["projector / predictor", f"{c('byol.projector_hidden')} -> {c('byol.projector_dim')}"],
            ["target momentum", f"{c('byol.base_momentum')} -> {c('byol.final_momentum')} (cosine)"],
            ["optimizer", f"{c('optim.name')} lr {c('optim.lr')} weight decay {c('optim.weight_decay')}"],
            ["schedule", f"{c('sched.name')} (warm-up {c('sched.warmup_epochs')} epochs)"],
            ["batch / epochs", f"{c('train.batch_size')} / {c('train.epochs')}"],
            ["final k-NN accuracy", fmt(r.summary.final.get("knn_acc"))],
        ])
        _provenance(doc, [r])
    doc.heading(2, "2. Transfer settings A-E (validation accuracy)")
    if not tables:
        doc.missing("no A-E table", MISSING_COMMANDS[("p2", "table")])
    for t in tables:
        rows = []
        for row in t.rows:
            run = t.runs.get(row["setting"])
            final = run.summary.final.get("val_acc") if run else None
            best = f"{fmt(run.best)} ({run.summary.best_epoch})" if run else "-"
            rows.append([row["setting"], row["pre-training"], row["fine-tuning"], fmt(final), best])
        doc.table(["setting", "pre-training", "fine-tuning", "val acc (final)", "best (epoch)"], rows)
        _provenance(doc, list(t.runs.values()))
    sl_runs = [r for r in runs if r.problem == "p2" and r.task == "classify"]
    if sl_runs:
        doc.text("Backbone and transfer runs given on their own:")
        _results_table(doc, sl_runs, "val_acc")
        _provenance(doc, sl_runs)
    doc.heading(2, "3. k-NN accuracy and the collapse monitor over epochs")
    for r in byol_runs:
        doc.table(["epoch", "train_loss", "embed_std", "knn_acc"],
                  [[row["epoch"], fmt(row.get("train_loss")), fmt(row.get("embed_std")), fmt(row.get("knn_acc"))]
                   for row in r.rows])
        if "training_curves" in r.figures:
            doc.figure(r.figures["training_curves"], f"BYOL loss, embed_std and k-NN accuracy, {r.path}")


def _p3(doc, runs: list[Run], arch_dir: Path) -> None:
    doc.heading(1, "Problem 3: semantic segmentation")
    doc.heading(2, "1. Architectures of model A and model B")
    _architectures(doc, runs, "p3", arch_dir)
    doc.heading(2, "2. Validation mIoU (the course's evaluator) and per-class IoU")
    p3 = _role_results(doc, runs, "p3", "val_miou")
    classes = next((list(_per_class_iou(r)) for r in p3 if _per_class_iou(r)), [])
    if classes:
        doc.text("Per-class IoU of each run's last validation:")
        doc.table(["run", *classes], [[r.path.name, *(fmt(_per_class_iou(r).get(c)) for c in classes)] for r in p3])
    doc.heading(2, "3. Predicted masks of 0013, 0062, 0104 at the first, middle and last epoch")
    gridded = [r for r in p3 if "mask_grid" in r.figures]
    best = max(gridded, key=lambda r: r.best or 0, default=None)
    model_b = _pick(gridded, "p3", "B")
    if best is None:
        doc.missing("model B's mask snapshots", MISSING_COMMANDS[("p3", "B")])
    shown = [(best, "the best run")] if best else []
    shown += [(model_b, "the report's model B")] if model_b not in (None, best) else []
    for run, which in shown:
        doc.figure(run.figures["mask_grid"], f"{which}: model {run.role} ({run.model}), {run.path}, best val "
                                             f"mIoU {fmt(run.best)}")
    doc.heading(2, "4. Training curves")
    for r in p3:
        if "training_curves" in r.figures:
            doc.figure(r.figures["training_curves"], f"model {r.role} ({r.model}), {r.path}")


def _own_data(doc, runs: list[Run]) -> None:
    """Runs on a dataset of the user's own (no course problem): results, each class by name, figures."""
    mine = sorted((r for r in runs if r.problem is None), key=lambda r: str(r.path))
    if not mine:
        return
    doc.heading(1, "Runs on datasets of your own")
    for r in mine:
        doc.heading(2, f"{r.path.name}: {r.task}, layout {r.summary.inputs.get('layout')}")
        _results_table(doc, [r], r.monitor)
        per_class = r.summary.extras.get("per_class_acc") or r.summary.extras.get("per_class_iou") or {}
        if per_class:
            doc.table(["class", f"{'accuracy' if r.task == 'classify' else 'IoU'} (final)"],
                      [[name, fmt(value)] for name, value in per_class.items()])
        _provenance(doc, [r])
        for name in ("per_class_accuracy", "per_class_iou", "confusion_matrix", "mask_grid", "training_curves"):
            if name in r.figures:
                doc.figure(r.figures[name], f"{name.replace('_', ' ')}, {r.path}")


TITLE = "DLCV homework 1: the report, reproduced by dlcv"


def check_report_paths(paths: list[str | Path], out_html: str | Path) -> None:
    """Before any work: `--out` is an .html file (its Markdown twin, the same name with .md, is written
    beside it), neither file is a file of a run it reads, and neither replaces a file that is not an earlier
    report."""
    out_html = check_output(out_html, "--out")
    if out_html.suffix.lower() not in (".html", ".htm"):
        raise DlcvError(f"--out {out_html}: the report is an .html file (its Markdown twin gets the same name "
                        "with .md); give a name ending in .html")
    runs, tables = collect(paths)
    inputs = [item.path for item in (*runs, *tables)]
    check_output(out_html, "--out", inputs)
    twin = out_html.with_suffix(".md")
    check_output(twin, "--out's Markdown twin", inputs)
    head = document.to_html(document.Document(TITLE)).split("<style>")[0]  # what every report begins with
    if out_html.is_file() and not starts_with(out_html, head):
        raise DlcvError(f"--out {out_html} exists and is not a dlcv report: it would be overwritten; pick another "
                        "--out name")
    if twin.is_file() and not starts_with(twin, f"# {TITLE}\n"):
        raise DlcvError(f"--out's Markdown twin {twin} exists and is not a dlcv report: it would be overwritten; "
                        "pick another --out name")


# The course's data, against which a report on the synthetic tree says how far it is scaled down
COURSE_DATA = {"p1": "20,000 training images of 50 classes", "p2": "6,400 unlabeled images, then a labelled set "
               "of 2,520 (a stand-in for Office-Home's 65 classes)", "p3": "1,800 training tiles of 512 px"}


def _span(values) -> str:
    values = sorted({v for v in values if v is not None})
    return "?" if not values else f"{values[0]:,}" if len(values) == 1 else f"{values[0]:,}-{values[-1]:,}"


def synthetic_banner(runs: list[Run]) -> str | None:
    """What a report whose runs trained on the synthetic tree (`dlcv data synth`) must say first: that, and
    at what scale, problem by problem; None when no run did."""
    synthetic = [r for r in runs if r.config["data"]["root"] and is_synthetic(r.config["data"]["root"])]
    if not synthetic:
        return None
    scales = []
    for problem in ("p1", "p2", "p3"):
        mine = [r for r in synthetic if r.problem == problem]
        if mine:
            what = "tiles" if problem == "p3" else "images"
            classes = f" of {_span(r.classes for r in mine)} classes" if problem != "p3" and any(
                r.classes for r in mine) else ""  # (P3: the course's 7, always)
            side = f" of {_span(_tile_side(r) for r in mine)} px" if problem == "p3" else ""
            scales.append(f"{problem.upper()} {_span(r.train_samples for r in mine)} training {what}{classes}{side}, "
                          f"{_span(r.config['train']['epochs'] for r in mine)} epochs (the course: "
                          f"{COURSE_DATA[problem]})")
    return (f"Synthetic data, scaled down: {len(synthetic)} of these {len(runs)} runs trained on the images of "
            f"`dlcv data synth`, not the course's, and for a few epochs: {'; '.join(scales)}. Their numbers show "
            "that every step works, not what a recipe scores on the course's data (docs/results-p1.md, -p2, -p3 "
            "hold those).")


def build_report(paths: list[str | Path], out_html: str | Path) -> tuple[Path, Path]:
    runs, tables = collect(paths)
    doc = document.Document(TITLE)
    banner = synthetic_banner([*runs, *(run for t in tables for run in t.runs.values())])
    if banner:
        doc.banner(banner)
    doc.text(f"Built from {len(runs)} run(s) and {len(tables)} A-E table(s). Every number comes from its run's "
             "summary.json; below each table are the command and the environment that produced it.")
    with tempfile.TemporaryDirectory() as arch_dir:
        _p1(doc, runs, Path(arch_dir))
        _p2(doc, runs, tables)
        _p3(doc, runs, Path(arch_dir))
        _own_data(doc, runs)
        return document.write(doc, out_html)
