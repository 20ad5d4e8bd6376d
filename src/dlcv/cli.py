"""The `dlcv` command line. Errors the user can fix print one clear line and exit with code 2."""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import logging
import os
import shlex
import sys
import textwrap
from functools import partial
from pathlib import Path

from dlcv import config as config_mod, task_registry
from dlcv.errors import DlcvError
from dlcv.fileio import check_output, check_replaceable, run_folder_of
from dlcv.malloc import reexec_with_settings

log = logging.getLogger("dlcv")

DESCRIPTION = """\
dlcv trains and evaluates computer-vision models from YAML recipes: image classifiers, BYOL self-supervised
backbones with their transfer settings, and semantic segmenters; the three problems of the NTU "Deep
Learning for Computer Vision" 2023 homework 1 with the course's scoring, its graded scripts (hw1_1.sh,
hw1_2.sh, hw1_3.sh) and its report, rebuilt from the run folders.

examples:
  dlcv data synth /tmp/synth      # a small dataset in the course's layout, in seconds
  dlcv classify train -c p1_cpu --set data.root=/tmp/synth/hw1_data/p1_data --set train.epochs=10 --out runs/p1
  dlcv classify predict --ckpt runs/p1/checkpoints/last.pt /tmp/synth/hw1_data/p1_data/val_50 pred.csv

Each training command's --help lists its recipes; `dlcv config show -c RECIPE` prints one resolved. Every
command and config key: docs/usage.md."""


FIGURE_SUFFIXES = (".png", ".svg", ".pdf")


def check_figure_path(path: str, what: str, inputs=()) -> None:
    if Path(path).suffix.lower() not in FIGURE_SUFFIXES:
        raise DlcvError(f"{what} {path}: a figure file must end in {', '.join(FIGURE_SUFFIXES)}")
    check_output(path, what, inputs)


def _checkpoint_inputs(ckpt: str) -> list:
    """A checkpoint and the run folder it lies in: what a command that reads it must never write."""
    return [ckpt, run_folder_of(ckpt)]


def _training_inputs(cfg: dict, config_path: str | None) -> list:
    """The files and folders a training run reads: its recipe, data.root and the data folders and CSVs of
    its config (relative to data.root; `auto`: every folder the search may pick), and a model.weights file."""
    from dlcv.data import layouts
    root = cfg["data"]["root"]
    inputs = [config_path and config_mod.find_recipe(config_path), root, cfg["model"]["weights"]]
    for section in ("data", "knn"):
        for key, value in cfg.get(section, {}).items():
            if key.endswith(("_dir", "_csv")) and key != "cache_dir" and isinstance(value, str) and root:
                names = (*layouts.TRAIN_NAMES, *layouts.VAL_NAMES) if value == layouts.AUTO else (value,)
                inputs += [Path(root) / name for name in names]
    return inputs


def _whole_number(minimum: int, maximum: int = config_mod.INT64_MAX):
    """An argument's whole number in minimum..maximum (torch's sizes and counts are 64-bit)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
        return value
    return parse


class _Later(str):
    """A help text written only when --help asks for it: the parser is built at every start, without reading
    the recipes or importing torch."""

    def __new__(cls, make):
        text = super().__new__(cls, "")
        text.make = make
        return text


class _Help(argparse.RawDescriptionHelpFormatter):
    """Line breaks kept as written; _Later texts written now."""

    def add_text(self, text):
        super().add_text(text.make() if isinstance(text, _Later) else text)


def recipes_help(task: str) -> str:
    """What a command that trains `task` says about its recipes and keys."""
    names = textwrap.fill(", ".join(config_mod.shipped_recipes(task)), width=100, initial_indent="  ",
                          subsequent_indent="  ")
    return (f"recipes (-c NAME, or -c your.yaml; what each is for: docs/recipes.md):\n{names}\n\n"
            "config keys: `dlcv config show -c NAME` prints every key of a recipe with its value; change any with "
            "--set KEY=VALUE;\nwhat they mean: docs/usage.md, section Config keys")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", help="YAML recipe: a shipped name (listed above) or a file (optional with "
                                          "--resume: the run's saved config is used)")
    _add_set_arg(p)
    p.add_argument("--out", help="run directory (default runs/<config>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")


def _add_set_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 (repeatable; values are YAML)")


def _add_predict_args(p: argparse.ArgumentParser, *positionals: str, tta: bool = True, exported: bool = True) -> None:
    """tta: the command applies the checkpoint's test-time augmentation, and --no-tta turns it off.
    exported: --model takes an exported file (dlcv export) as well as a checkpoint (--ckpt: its other name)."""
    if exported:
        p.add_argument("--model", "--ckpt", dest="model", required=True,
                       help="a dlcv checkpoint, or a model written by `dlcv export` (ONNX, TorchScript)")
    else:
        p.add_argument("--ckpt", dest="model", required=True, help="a dlcv checkpoint")
    for name in positionals:
        p.add_argument(name)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--batch-size", type=_whole_number(1), default=None,
                   help="images per forward pass (default: the run's train.eval_batch_size, as it validated)")
    p.add_argument("--precision", default="auto", choices=config_mod.COMMON_CHOICES["train.precision"],
                   help="autocast precision (default auto: the one the run validated in, so the labels are its "
                        "validation's; fp32 where this device cannot run that, with a warning)")
    if tta:
        p.add_argument("--no-tta", dest="tta", action="store_false",
                       help="skip the checkpoint's test-time augmentation (plain, faster predictions)")


def version_line() -> str:
    """`dlcv VERSION`, plus the git commit when dlcv runs from a source checkout."""
    import dlcv
    try:
        version = importlib.metadata.version("dlcv")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree without installing it
        version = dlcv.__version__
    commit = dlcv.source_commit(short=True)
    return f"dlcv {version}" + (f" (git {commit})" if commit else "")


class _VersionAction(argparse.Action):
    """argparse's own version action, but git is asked only when --version is given."""

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, nargs=0, help="print the version (and git commit) and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dlcv", description=DESCRIPTION, formatter_class=_Help)
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="group", required=True)
    data = sub.add_parser("data", help="data utilities").add_subparsers(dest="cmd", required=True)
    synth = data.add_parser("synth", help="write a small synthetic hw1_data tree (the built-in demo data)",
                            description=_Later(_synth_description), formatter_class=_Help)
    synth.add_argument("out_dir", help="the tree goes to OUT_DIR/hw1_data")
    synth.add_argument("--seed", type=_whole_number(0), default=0, help="another seed, other images (default 0)")
    synth.add_argument("--force", action="store_true", help="replace an existing OUT_DIR/hw1_data")
    check = data.add_parser("check", help="what training would read in a dataset folder: its layout, splits, "
                                          "classes with their counts, image sizes and every file left out")
    check.add_argument("root", help="the dataset folder (what data.root names)")
    check.add_argument("--task", choices=("auto", *(entry.name for entry in task_registry.TASKS)), default="auto",
                       help="the task that would read it (default: guessed from the tree)")
    check.add_argument("--layout", default="auto", help="force a layout (classify: course, folders, csv; "
                                                          "segment: course, pairs), as data.layout does")
    groups = _add_task_commands(sub)
    _add_classify_commands(groups["classify"])
    _add_ssl_commands(groups["ssl"])
    _add_segment_commands(groups["segment"])
    _add_tool_commands(sub)
    return parser


def _add_task_commands(sub) -> dict[str, argparse._SubParsersAction]:
    """Each registered task's training command; returns the command groups, which hold the tasks' other
    commands too."""
    groups = {}
    for entry in task_registry.TASKS:
        if entry.group not in groups:
            groups[entry.group] = sub.add_parser(entry.group, help=entry.group_help).add_subparsers(
                dest="cmd", required=True)
        _add_train_args(groups[entry.group].add_parser(entry.verb, help=entry.help, formatter_class=_Help,
                                                       description=_Later(partial(_train_description, entry))))
    return groups


def _train_description(entry: task_registry.TaskEntry) -> str:
    return f"{entry.help[0].upper()}{entry.help[1:]}: a run folder (--out) from a recipe and its overrides.\n\n" \
           f"{recipes_help(entry.name)}"


def _synth_description() -> str:
    from dlcv.data.synth import SynthSizes, validation_tiles
    s = SynthSizes()
    return (f"Writes OUT_DIR/hw1_data in the course's layout (seconds; deterministic for a --seed):\n"
            f"  p1_data  {s.p1_classes * s.p1_train_per_class} training and {s.p1_classes * s.p1_val_per_class} "
            f"validation 32x32 PNGs of {s.p1_classes} classes (a shape in a colour on clutter), val_gt.csv\n"
            f"  p2_data  {s.p2_mini_classes * s.p2_mini_per_class} unlabeled mini/train JPEGs (+ train.csv of their "
            f"{s.p2_mini_classes} classes);\n           office/ {s.p2_office_classes} classes, "
            f"{s.p2_office_classes * s.p2_office_train_per_class} train / "
            f"{s.p2_office_classes * s.p2_office_val_per_class} val images with their CSVs\n"
            f"  p3_data  {s.p3_train} training and {len(validation_tiles(s))} validation {s.p3_size}x{s.p3_size} "
            "tiles (xxxx_sat.jpg + xxxx_mask.png in the course palette)\n"
            "Every shipped recipe trains on it with --set data.root=OUT_DIR/hw1_data/p1_data (p2_data, p3_data).")


def _add_classify_commands(classify) -> None:
    predict = classify.add_parser("predict", help="write filename,label for every image of a folder")
    _add_predict_args(predict, "image_dir", "out_csv")
    _add_topk_arg(predict)
    embed = classify.add_parser("embed", help="PCA or t-SNE figure of a checkpoint's features on a folder")
    _add_predict_args(embed, "image_dir", tta=False, exported=False)
    embed.add_argument("--method", choices=("pca", "tsne"), default="pca")
    embed.add_argument("--out", required=True, help="figure file (.png or .svg)")
    ensemble = classify.add_parser("ensemble", help="write classify checkpoints as one exported model that "
                                                    "predicts the mean of their logits (for predict, hw1_1.sh)")
    ensemble.add_argument("ckpts", nargs="+", metavar="CKPT", help="classify checkpoints of the same classes")
    _add_export_args(ensemble, "the members' test-time views")


def _add_ssl_commands(ssl) -> None:
    export = ssl.add_parser("export", help="write a plain torchvision ResNet state_dict from a checkpoint")
    export.add_argument("ckpt", help="an ssl pretrain checkpoint, or a classify checkpoint of a ResNet "
                                      "(resnet50, resnet18, resnet50_cifar, resnet18_cifar)")
    export.add_argument("out", help="backbone file (.pt)")
    finetune = ssl.add_parser("finetune", help="train one transfer setting (A-E) with the classify task",
                              description=_Later(lambda: recipes_help("classify")), formatter_class=_Help)
    _add_train_args(finetune)
    finetune.add_argument("--setting", required=True, choices=tuple("ABCDE"))
    finetune.add_argument("--backbone", help="backbone file for B-E (supervised for B/D, BYOL for C/E)")
    table = ssl.add_parser("table", help="run settings A-E and write table.md / table.csv",
                           description=_Later(lambda: recipes_help("classify")), formatter_class=_Help)
    table.add_argument("-c", "--config", required=True, help="the fine-tuning recipe (e.g. p2_finetune)")
    _add_set_arg(table)
    table.add_argument("--sl-backbone", help="supervised backbone file (settings B, D)")
    table.add_argument("--ssl-backbone", help="BYOL backbone file (settings C, E)")
    table.add_argument("--settings", default="ABCDE", help="subset to run, e.g. ACE (default ABCDE)")
    table.add_argument("--out", default="runs/p2_table")
    ssl_predict = ssl.add_parser("predict", help="write id,filename,label for the rows of a CSV")
    _add_predict_args(ssl_predict, "in_csv", "image_dir", "out_csv")
    _add_topk_arg(ssl_predict)


def _add_topk_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topk", type=_whole_number(1), default=0, metavar="K",
                   help="also write the K most probable classes and their probabilities (columns label_1, prob_1, "
                        "..., label_K, prob_K after the graded ones)")


def _add_segment_commands(segment) -> None:
    seg_predict = segment.add_parser("predict", help="write xxxx_mask.png for every xxxx_sat.jpg of a folder")
    _add_predict_args(seg_predict, "image_dir", "out_dir")
    seg_predict.add_argument("--compile", action="store_true",
                             help="torch.compile the model with weight freezing: the same masks; VGG16-FCN32s "
                                  "1.59x on a Zen 5 CPU, 1.02x on an AMX Xeon (docs/performance.md); needs a C++ "
                                  "compiler and a few seconds per tile size")
    miou = segment.add_parser("miou", help="the course's mIoU of a folder of predicted masks")
    miou.add_argument("gt_dir")
    miou.add_argument("pred_dir")


def _add_export_args(p: argparse.ArgumentParser, views: str) -> None:
    p.add_argument("--out", required=True, help="the file to write (e.g. model.onnx, model.pt)")
    p.add_argument("--format", choices=("onnx", "torchscript"),
                   help="default: from --out's name (.onnx: ONNX; .pt, .pth, .ts: TorchScript)")
    p.add_argument("--no-tta", dest="tta", action="store_false",
                   help=f"leave {views} out of the graph (plain, faster predictions)")
    p.add_argument("--opset", type=_whole_number(18), default=18, help="ONNX opset (default 18)")


def _add_tool_commands(sub) -> None:
    ev = sub.add_parser("eval", help="score predictions").add_subparsers(dest="cmd", required=True)
    acc = ev.add_parser("acc", help="accuracy of a prediction CSV, matched to the ground truth by file name")
    acc.add_argument("gt_csv", metavar="GT", help="ground truth: a filename,label CSV, or a labelled folder (class "
                                                  "folders, {label}_{id} names, or FOLDER.csv beside it)")
    acc.add_argument("pred_csv")
    sub.add_parser("models", help="list the registered models")
    export = sub.add_parser("export", help="write a checkpoint as an ONNX or TorchScript file that predicts what "
                                           "it predicts, verified against it")
    export.add_argument("--ckpt", required=True, help="a dlcv checkpoint (classify, segment, or ssl: its backbone)")
    _add_export_args(export, "the checkpoint's test-time views")
    config = sub.add_parser("config", help="recipes and their resolved configs").add_subparsers(dest="cmd",
                                                                                                 required=True)
    show = config.add_parser("show", help="print a recipe's resolved config (every key, with --set applied)",
                             description="Prints the config a training command would run with: the task's "
                                         "defaults, the recipe over them, then each --set, checked; as YAML that "
                                         "-c reads back.")
    show.add_argument("-c", "--config", required=True, help="a shipped recipe's name or a YAML file")
    _add_set_arg(show)
    report = sub.add_parser("report", help="the course report (HTML + Markdown twin) from run directories")
    report.add_argument("runs", nargs="+", help="run directories, ssl table directories, or folders of them")
    report.add_argument("--out", default="report.html")
    viz = sub.add_parser("viz", help="figures").add_subparsers(dest="cmd", required=True)
    arch = viz.add_parser("arch", help="architecture diagram of a registered model (blocks with output shapes)")
    arch.add_argument("model")
    arch.add_argument("--out", required=True, help="figure file (.png or .svg)")
    arch.add_argument("--input-size", type=_whole_number(1, config_mod.MAX_SIDE),
                      help="input side (default: the model's usual one)")
    arch.add_argument("--num-classes", type=_whole_number(1))
    arch.add_argument("--options", default="{}", help="model options as YAML, e.g. '{widths: [32, 64, 128]}'")
    demo = sub.add_parser("demo", help="run the report's experiments, scaled down, on built-in data")
    demo.add_argument("--out", default="demo_out")
    demo.add_argument("--data", help="a real hw1_data tree instead of the synthetic one")
    demo.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def _saved_config(run_dir: str | None) -> dict:
    """A run folder's config.yaml, or {} where there is none (the resume itself then says why)."""
    saved = Path(run_dir or "") / "config.yaml"
    return config_mod.load_yaml(saved) if run_dir and saved.is_file() else {}


def _recipe(config: str | dict | None, out: str | None, resume: bool) -> dict:
    """The recipe a training command starts from: --resume's saved config.yaml, with -c's recipe (a file, a
    shipped recipe's name, or, from Python, a mapping) over it."""
    recipe = {}
    if resume:
        if not out:
            raise DlcvError("--resume needs --out RUN_DIR (the run to continue)")
        saved = Path(out) / "config.yaml"
        if not saved.is_file():
            hint = ("it stopped before its run started: run the same command without --resume"
                    if Path(out).is_dir() else "is it a run directory?")
            raise DlcvError(f"--resume: {saved} not found; {hint}")
        recipe = config_mod.load_yaml(saved)
    if config:
        given = copy.deepcopy(config) if isinstance(config, dict) else config_mod.load_yaml(config)
        recipe = config_mod.deep_merge(recipe, given)
    elif not resume:
        raise DlcvError("a config is required: -c CONFIG (see configs/)")
    return recipe


def training_run(entry: task_registry.TaskEntry, config: str | dict | None, overrides: list[str],
                 out: str | None, resume: bool):
    """A training command's run, checked and ready (its recipe, --set overrides and run folder), not yet
    started: (Trainer, run folder). `dlcv.train` runs the same."""
    from dlcv.engine.run import default_run_dir
    from dlcv.engine.trainer import Trainer

    recipe = _recipe(config, out, resume)
    if recipe.get("task", entry.name) != entry.name:
        source = config if isinstance(config, str) else f"{out} (--resume)" if config is None else "the recipe"
        try:
            verb = task_registry.task(recipe["task"]).command
        except KeyError:
            verb = recipe["task"]
        raise DlcvError(f"{source} is a {recipe['task']} recipe: use dlcv {verb}")
    module = entry.load()
    cfg = module.SCHEMA.resolve(recipe, overrides)
    config_path = config if isinstance(config, str) else None
    out = str(check_output(out or default_run_dir(config_path, cfg["task"]), "--out",
                           _training_inputs(cfg, config_path), folder=True))
    return Trainer(module.TASK(cfg), cfg, out, resume=resume), out


def _train(entry: task_registry.TaskEntry, args, extra_overrides: list[str] = ()) -> int:
    trainer, args.out = training_run(entry, args.config, [*args.overrides, *extra_overrides], args.out, args.resume)
    summary = trainer.fit()
    log.info("best %s %s (epoch %s); run directory %s", summary.monitor, summary.best_value, summary.best_epoch,
             args.out)
    return 0


def _data_synth(args) -> int:
    from dlcv.data.synth import write_tree
    check_output(args.out_dir, "data synth OUT_DIR", folder=True)
    log.info("wrote %s", write_tree(args.out_dir, seed=args.seed, force=args.force))
    return 0


def _data_check(args) -> int:
    from dlcv.data import layouts
    root = layouts.data_root({"root": args.root})
    task = layouts.guess_task(root) if args.task == "auto" else args.task
    data = {"root": str(root), **({} if args.layout == "auto" else {"layout": args.layout})}
    cfg = task_registry.task(task).load().SCHEMA.resolve({"data": data})
    print("\n".join(layouts.describe(task, cfg["data"])))
    if args.task == "auto" and task == "ssl":
        print(f"(no training folder in {root}: read as unlabeled images; for a labelled dataset give the folder "
              "that holds its train/ folder)")
    return 0


def _config_show(args) -> int:
    recipe = config_mod.load_yaml(args.config)
    try:
        entry = task_registry.task(recipe.get("task"))
    except KeyError:
        tasks = ", ".join(entry.name for entry in task_registry.TASKS)
        raise DlcvError(f"{args.config}: its task: key is {recipe.get('task')!r}, not one of {tasks}") from None
    cfg = entry.load().SCHEMA.resolve(recipe, args.overrides)
    print(f"# {args.config}{' with ' + config_mod.set_flags(args.overrides) if args.overrides else ''}, resolved: "
          f"dlcv {entry.command} -c THIS_FILE trains it")
    print(config_mod.dump(cfg), end="")
    return 0


def _models(args) -> int:
    from dlcv.models import list_models
    print("\n".join(list_models()))
    return 0


def _eval_acc(args) -> int:
    from dlcv.contracts.classify import accuracy_of_csvs
    accuracy, correct, total, missing = accuracy_of_csvs(args.gt_csv, args.pred_csv)
    if missing:
        log.warning("%d ground-truth file(s) have no prediction (counted as wrong)", missing)
    print(f"accuracy: {accuracy:.4f} ({correct}/{total})")
    return 0


def _classify_predict(args) -> int:
    from dlcv.contracts.classify import predict_folder
    from dlcv.engine.distributed import pick_device
    check_output(args.out_csv, "OUT_CSV", [*_checkpoint_inputs(args.model), args.image_dir])
    check_replaceable(args.out_csv, "OUT_CSV")
    n = predict_folder(args.model, args.image_dir, args.out_csv, pick_device(args.device), args.batch_size,
                       args.tta, args.precision, args.topk)
    log.info("wrote %d predictions to %s", n, args.out_csv)
    return 0


def _classify_embed(args) -> int:
    from dlcv.contracts.classify import embed_figure
    from dlcv.engine.distributed import pick_device
    check_figure_path(args.out, "--out", [*_checkpoint_inputs(args.model), args.image_dir])
    embed_figure(args.model, args.image_dir, args.method, args.out, pick_device(args.device), args.batch_size,
                 args.precision)
    log.info("wrote %s", args.out)
    return 0


def _classify_ensemble(args) -> int:
    from dlcv.export import check_export_target, export_ensemble
    check_output(args.out, "--out", [path for ckpt in args.ckpts for path in _checkpoint_inputs(ckpt)])
    check_export_target(args.out)
    export_ensemble(args.ckpts, args.format, args.out, args.tta, args.opset)
    log.info("wrote %s (%d members)", args.out, len(args.ckpts))
    return 0


def _ssl_finetune(args) -> int:
    from dlcv.pipelines import transfer
    if args.setting == "A" and args.backbone:
        log.warning("setting A starts from random weights: --backbone %s is not used", args.backbone)
    backbone = args.backbone
    if args.resume and backbone is None and args.setting != "A":  # the run's own backbone file
        backbone = _saved_config(args.out).get("model", {}).get("weights")
    # on --resume too: another setting than the run's is then refused, naming the difference
    return _train(task_registry.task("classify"), args, transfer.setting_overrides(args.setting, backbone))


def _ssl_export(args) -> int:
    from dlcv.contracts.backbone import export_backbone
    check_output(args.out, "backbone file OUT", _checkpoint_inputs(args.ckpt))
    arch = export_backbone(args.ckpt, args.out)
    log.info("wrote %s (torchvision %s state_dict)", args.out, arch)
    return 0


def _ssl_table(args) -> int:
    from dlcv.pipelines import transfer
    check_output(args.out, "--out", [args.config, args.sl_backbone, args.ssl_backbone], folder=True)
    text = transfer.run_table(config_mod.load_yaml(args.config), args.overrides, args.sl_backbone,
                              args.ssl_backbone, Path(args.out), args.settings)
    print(text, end="")
    return 0


def _ssl_predict(args) -> int:
    from dlcv.contracts.classify import predict_csv
    from dlcv.engine.distributed import pick_device
    check_output(args.out_csv, "OUT_CSV", [*_checkpoint_inputs(args.model), args.in_csv, args.image_dir])
    check_replaceable(args.out_csv, "OUT_CSV")
    n = predict_csv(args.model, args.in_csv, args.image_dir, args.out_csv, pick_device(args.device),
                    args.batch_size, args.tta, args.precision, args.topk)
    log.info("wrote %d predictions to %s", n, args.out_csv)
    return 0


def _segment_miou(args) -> int:
    from dlcv.contracts.segment import format_scores, prediction_classes, score_folders
    from dlcv.data.masks import warn_if_pairs_differ
    warn_if_pairs_differ(args.gt_dir, args.pred_dir)
    print(format_scores(*score_folders(args.gt_dir, args.pred_dir), prediction_classes(args.pred_dir)), end="")
    return 0


def _segment_predict(args) -> int:
    from dlcv.contracts.segment import predict_folder
    from dlcv.engine.distributed import pick_device
    check_output(args.out_dir, "OUT_DIR", [*_checkpoint_inputs(args.model), args.image_dir], folder=True)
    n = predict_folder(args.model, args.image_dir, args.out_dir, pick_device(args.device), args.batch_size,
                       args.tta, args.compile, args.precision)
    log.info("wrote %d masks to %s", n, args.out_dir)
    return 0


def _export(args) -> int:
    from dlcv.export import check_export_target, export_model
    check_output(args.out, "--out", _checkpoint_inputs(args.ckpt))
    check_export_target(args.out)
    export_model(args.ckpt, args.format, args.out, args.tta, args.opset)
    log.info("wrote %s", args.out)
    return 0


def _report(args) -> int:
    from dlcv.report.build import build_report, check_report_paths
    check_report_paths(args.runs, args.out)
    html_path, md_path = build_report(args.runs, args.out)
    log.info("wrote %s and %s", html_path, md_path)
    return 0


def _viz_arch(args) -> int:
    from dlcv.viz.arch import architecture_figure
    check_figure_path(args.out, "--out")
    options = config_mod.parse_override(f"options={args.options}")[1]
    if not isinstance(options, dict):
        raise DlcvError(f"--options must be a YAML mapping, got {args.options!r}")
    architecture_figure(args.model, args.out, args.input_size, args.num_classes, options)
    log.info("wrote %s", args.out)
    return 0


def _demo(args) -> int:
    from dlcv.pipelines.demo import check_demo_folder, run_demo
    check_output(args.out, "--out", [args.data], folder=True)
    check_demo_folder(args.out)
    run_demo(args.out, args.data, args.device)
    return 0


# (group, command): what runs it; the tasks' training commands come from the task registry
COMMANDS = {
    ("data", "synth"): _data_synth, ("data", "check"): _data_check, ("models", None): _models,
    ("config", "show"): _config_show,
    ("eval", "acc"): _eval_acc,
    ("classify", "predict"): _classify_predict, ("classify", "embed"): _classify_embed,
    ("classify", "ensemble"): _classify_ensemble,
    ("ssl", "finetune"): _ssl_finetune, ("ssl", "export"): _ssl_export, ("ssl", "table"): _ssl_table,
    ("ssl", "predict"): _ssl_predict, ("segment", "miou"): _segment_miou, ("segment", "predict"): _segment_predict,
    ("export", None): _export, ("report", None): _report, ("viz", "arch"): _viz_arch, ("demo", None): _demo,
}


def run(args) -> int:
    command = args.group, getattr(args, "cmd", None)
    entry = task_registry.by_command(*command)
    return _train(entry, args) if entry is not None else COMMANDS[command](args)


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # a real command (not a call from Python): restart once with the allocator settings
        reexec_with_settings(sys.argv[1:])
    args = build_parser().parse_args(argv)
    try:
        rank = config_mod.env_whole_number("RANK", 0)
        logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format="%(message)s",
                            stream=sys.stdout)
        code = run(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
        return code
    except BrokenPipeError:  # `dlcv models | head`: the reader has what it wanted; no message
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nor one at exit, when Python flushes
        return 141  # as a program the SIGPIPE ended (128 + 13)
    except (DlcvError, config_mod.ConfigError) as exc:
        print(f"dlcv: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # anything the checks above did not foresee still gets one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"dlcv: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dlcv: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    finally:  # one process group serves every run of the command (set up by the first, if any)
        distributed = sys.modules.get("dlcv.engine.distributed")  # not imported: no run, nothing to end
        if distributed is not None:
            distributed.teardown()


def _resume_hint(args) -> str:
    """For training commands (each task's, and `ssl finetune`, which trains the classify task): the command
    that continues the run (finished outputs are complete files)."""
    command = args.group, getattr(args, "cmd", None)
    trains = task_registry.by_command(*command) is not None or command == ("ssl", "finetune")
    if trains and getattr(args, "out", None):
        return f"; continue with: dlcv {' '.join(command)} --out {shlex.quote(str(args.out))} --resume"
    return ""
