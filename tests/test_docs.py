"""The documentation stays true. Every `dlcv ...` command in README.md, docs/*.md and CHANGELOG.md parses
with the real argument parser; its recipe (`-c`) exists and belongs to the command's task; every `--set` key
is a key of that task, and concrete values resolve. Code blocks hold whole command lines; inline code may
also mention a command without its required arguments (`dlcv ssl table`), but its words must still name one.
Relative links point at files and headings that exist.

And the commands of the code blocks of README.md and docs/*.md RUN, page by page in their order, in a folder
of their own (see `run_page`), on the synthetic data (`dlcv data synth /tmp/synth`, its path moved into that
folder), at smoke size: the test appends its own overrides to each training command (SMOKE: one optimizer
step, a few images, small inputs), never the docs. Skipped, and counted: lines tagged in a comment with one
of TAGS (a tag on a comment line of its own holds for the rest of its code block) and templates (an
UPPER_CASE placeholder such as IMAGE_DIR, or a shell variable, among the arguments)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import REPO
from dlcv import config as config_mod, task_registry
from dlcv.cli import build_parser, main

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "CHANGELOG.md"]
# the config schema of each training command, and of the commands that train with another task's recipe
TASK_OF = {**{(entry.group, entry.verb): entry.name for entry in task_registry.TASKS},
           ("ssl", "finetune"): "classify", ("ssl", "table"): "classify"}
SHELL_OPERATORS = {";", "&&", "||", "|", "&", "(", ")"}
LAUNCHERS = {"python", "python3", ".venv/bin/python", "torchrun"}  # followed by ... -m dlcv


def doc_lines(path: Path) -> list[tuple[int, str, bool]]:
    """(line number, text, inline) of every shell line in fenced code blocks (backslash continuations
    joined) and of every inline code span outside them."""
    lines, fenced, pending, start = [], False, "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines += [(number, span, True) for span in re.findall(r"`([^`]+)`", line)]
            continue
        if not pending:
            start = number
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        lines.append((start, pending, False))
        pending = ""
    return lines


def split_commands(text: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ; && || | &), comments dropped."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split, lexer.commenters = True, "#"
    commands, current = [], []
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append(current)
            current = []
        else:
            current.append(token)
    return [c for c in [*commands, current] if c]


def dlcv_argv(words: list[str]) -> list[str] | None:
    """The arguments of a `dlcv` / `.venv/bin/dlcv` / `python -m dlcv` / `torchrun ... -m dlcv` command."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # environment assignments
        words = words[1:]
    if words and words[0] in ("dlcv", ".venv/bin/dlcv"):
        return words[1:]
    if words and words[0] in LAUNCHERS:
        for i in range(1, len(words) - 1):
            if words[i] == "-m" and words[i + 1] == "dlcv":
                return words[i + 2:]
    return None


def documented_commands() -> list[tuple[str, list[str], bool]]:
    found = []
    for path in DOCS:
        for number, text, inline in doc_lines(path):
            try:
                commands = split_commands(text)
            except ValueError:  # not shell (an unbalanced quote in prose)
                continue
            found += [(f"{path.relative_to(REPO)}:{number}", argv, inline) for argv in map(dlcv_argv, commands)
                      if argv]  # a bare `dlcv` names the tool
    return found


def _task_module(name: str):
    return task_registry.task(name).load()


def check_command(argv: list[str], mention: bool = False) -> None:
    """Raises AssertionError naming what is wrong with a documented `dlcv` command line; a `mention` may
    leave out required arguments."""
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit as exc:
        if exc.code == 0 and "--help" not in argv and "-h" not in argv and "--version" not in argv:
            raise AssertionError("the parser exited") from None
        message = stderr.getvalue().strip().splitlines()[-1] if exc.code else ""
        if exc.code and not (mention and "the following arguments are required" in message):
            raise AssertionError(f"does not parse: {message}") from None
        return
    command = args.group, getattr(args, "cmd", None)
    task = TASK_OF.get(command)
    if task is None and command != ("config", "show"):
        return
    recipe = {}
    if getattr(args, "config", None):
        source = args.config if Path(args.config).name == args.config else REPO / args.config
        try:
            recipe = config_mod.load_yaml(source)
        except config_mod.ConfigError as exc:
            raise AssertionError(f"-c {args.config}: {exc}") from None
        task = task or recipe.get("task")  # config show: the recipe's own task
        if recipe.get("task", task) != task:
            raise AssertionError(f"-c {args.config} is a {recipe['task']} recipe, not {task}")
    module = _task_module(task)
    schema = config_mod.deep_merge(config_mod.COMMON_DEFAULTS, module.SCHEMA.defaults)
    for override in args.overrides:
        path, _ = config_mod.parse_override(override)
        node, walked = schema, []
        for key in path:
            if ".".join(walked) in ("model.options", "optim.lr_mult"):  # free-form mappings
                break
            if not isinstance(node, dict) or key not in node:
                raise AssertionError(f"--set {override}: '{'.'.join([*walked, key])}' is not a {task} config key")
            node = node[key]
            walked.append(key)
    concrete = [o for o in args.overrides if "$" not in o]  # shell variables stand for values of any type
    try:
        module.SCHEMA.resolve(recipe, concrete)
    except config_mod.ConfigError as exc:
        raise AssertionError(str(exc)) from None


COMMANDS = documented_commands()


def test_the_docs_hold_commands_of_every_kind():
    groups = {tuple(argv[:2]) for _, argv, inline in COMMANDS if not inline}
    assert sum(not inline for *_, inline in COMMANDS) >= 60
    assert {("classify", "train"), ("ssl", "pretrain"), ("ssl", "table"), ("segment", "train"),
            ("segment", "miou"), ("eval", "acc"), ("data", "synth")} <= groups


@pytest.mark.parametrize("where,argv,inline", COMMANDS, ids=[where for where, *_ in COMMANDS])
def test_documented_command_is_valid(where, argv, inline):
    check_command(argv, mention=inline)


@pytest.mark.parametrize("line,problem", [
    ("dlcv classify train -c p1_cpu --set train.epoch=3", "'train.epoch' is not a classify config key"),
    ("dlcv classify train -c p1_cpu --set train.epochs=0", "train.epochs"),
    ("dlcv classify train -c p1_cpus", "config file not found: p1_cpus"),
    ("dlcv classify train -c p3_cpu", "-c p3_cpu is a segment recipe, not classify"),
    ("dlcv segment train -c p3_cpu --set augment.alternate_flip=true", "'augment.alternate_flip'"),
    ("dlcv ssl finetune -c p2_finetune --setting F", "does not parse"),
    ("dlcv classify predict runs/x/best.pt DIR pred.csv", "does not parse"),
])
def test_the_check_catches_what_would_fail(line, problem):
    with pytest.raises(AssertionError, match=re.escape(problem)):
        check_command(dlcv_argv(split_commands(line)[0]))


def test_commands_are_found_in_every_form():
    text = ("cd x && DLCV_CACHE=/tmp/c dlcv models; .venv/bin/dlcv demo --out d  # a comment\n"
            "torchrun --standalone --nproc_per_node=2 -m dlcv segment train -c p3_deeplab")
    found = [dlcv_argv(c) for line in text.splitlines() for c in split_commands(line)]
    assert found == [None, ["models"], ["demo", "--out", "d"], ["segment", "train", "-c", "p3_deeplab"]]


def test_fenced_continuations_are_joined(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("`dlcv models`\n```bash\ndlcv classify train -c p1_cpu \\\n    --set train.epochs=2\n```\n")
    assert doc_lines(doc) == [(1, "dlcv models", True),
                              (3, "dlcv classify train -c p1_cpu      --set train.epochs=2", False)]


def test_inline_code_may_mention_a_command_but_must_name_a_real_one():
    check_command(["ssl", "table"], mention=True)
    with pytest.raises(AssertionError, match="required: -c/--config"):
        check_command(["ssl", "table"])
    with pytest.raises(AssertionError, match="invalid choice: 'tabel'"):
        check_command(["ssl", "tabel"], mention=True)


def test_the_help_examples_are_valid_commands():
    examples = [line.split("#")[0] for line in build_parser().description.splitlines()
                if line.startswith("  dlcv ")]
    assert len(examples) == 3
    for line in examples:
        check_command(dlcv_argv(split_commands(line)[0]))


# -- running the documented commands ------------------------------------------------------------------------

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# what a tag in a command's comment says it needs: such a command is not run here
TAGS = {"course data": "the course's hw1_data", "GPU": "a CUDA GPU", "network": "a download",
        "slow": "minutes of running"}
TAG = re.compile(r"\[(" + "|".join(map(re.escape, TAGS)) + r")\]")
PLACEHOLDER = re.compile(r"(^|[/=@])[A-Z][A-Z0-9_]*[A-Z0-9]([/:]|$)")
SYNTH = "/tmp/synth"  # the docs' synthetic tree; moved into the page's folder
GRADED_SCRIPTS = {"hw1_1.sh", "hw1_2.sh", "hw1_3.sh"}
# appended to every training command (keys the task lacks are left out): one optimizer step of 4 images, a
# validation of 4, at a small input size, on the CPU; the training set stays whole, so that a validation class
# is a training class; no end-of-run figures (tests/test_report.py and others look at them). A command on a run
# folder that trained before gets one more step.
SMOKE = {"device": "cpu", "train.batch_size": 4, "data.limit_val": 4, "data.image_size": 32,
         "data.input_size": None, "data.crop_size": 64, "tta.flip": False, "tta.translate": 0, "tta.rotate90": False,
         "tta.scales": [1.0], "snapshot.figures": False}


@dataclass
class Line:
    where: str  # page:line
    env: dict[str, str]  # VAR=value words before the command
    words: list[str]  # the command (dlcv ... or bash hw1_N.sh ...)
    tags: list[str]

    @property
    def template(self) -> bool:
        return any("$" in w or PLACEHOLDER.search(w) for w in [*self.words, *self.env.values()])


def page_lines(path: Path) -> list[Line]:
    """The dlcv commands and graded-script calls of a page's code blocks, in order, with their tags."""
    lines, fenced, block_tags, pending, start = [], False, [], "", 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced, block_tags = not fenced, []
            continue
        if not fenced:
            continue
        if line.lstrip().startswith("#"):
            block_tags += TAG.findall(line)
            continue
        start = start if pending else number
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        text, pending = pending, ""
        try:
            commands = split_commands(text)
        except ValueError:
            continue
        for words in commands:
            env = {}
            while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
                key, value = words.pop(0).split("=", 1)
                env[key] = value
            graded = words[:1] == ["bash"] and len(words) > 1 and Path(words[1]).name in GRADED_SCRIPTS
            if graded or dlcv_argv(words) is not None:
                page = path.relative_to(REPO) if path.is_relative_to(REPO) else path.name
                lines.append(Line(f"{page}:{start}", env, words,
                                  [*block_tags, *TAG.findall(text)]))
    return lines


def smoke_overrides(argv: list[str], trained_before: int) -> list[str]:
    """SMOKE for a training command's task (+ train.max_steps), as --set arguments; none for other commands."""
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            args = build_parser().parse_args(argv)
    except SystemExit:  # --help, --version, or what the command's own run reports
        return []
    task = TASK_OF.get((args.group, getattr(args, "cmd", None)))
    if task is None:
        return []
    keys = config_mod.deep_merge(config_mod.COMMON_DEFAULTS, _task_module(task).SCHEMA.defaults)
    sets = {"train.max_steps": trained_before + 1}
    for key, value in SMOKE.items():
        try:
            config_mod.get(keys, key)
        except KeyError:
            continue
        sets[key] = value if isinstance(value, str) else json.dumps(value)  # as YAML: null, false, [1.0]
    return config_mod.set_args([f"{k}={v}" for k, v in sets.items()])


def graded_argv(words: list[str], env: dict[str, str], folder: Path) -> list[str]:
    """The dlcv command a graded script runs (`bash hw1_1.sh IMAGE_DIR OUT_CSV` -> `classify predict --ckpt
    $DLCV_P1_CKPT -- IMAGE_DIR OUT_CSV`), read from its `hw1_run` line: run in this process, it costs no
    interpreter start (tests/test_cli.py runs the scripts themselves)."""
    script = (REPO / Path(words[1]).name).read_text(encoding="utf-8")
    usage, count, variable, default, subcommand = re.search(
        r'hw1_run "([^"]+)" (\d+) (\w+) (\S+) "([^"]+)" -- "\$@"', script).groups()
    args = words[2:]
    assert len(args) == int(count), f"usage: {usage}"
    return [*subcommand.split(), "--ckpt", env.get(variable, str(folder / "checkpoints" / default)), "--", *args]


def run_line(line: Line, folder: Path, trained: dict[str, int]) -> tuple[int, str]:
    """Runs one documented line in `folder` (the page's working folder), in this process: a dlcv command with
    SMOKE appended, a graded script as the dlcv command it runs. Returns (exit code, stderr)."""
    words = [w.replace(SYNTH, str(folder / "synth")) for w in line.words]
    env = {k: v.replace(SYNTH, str(folder / "synth")) for k, v in line.env.items()}
    argv = graded_argv(words, env, folder) if words[0] == "bash" else dlcv_argv(words)
    out = next((argv[i + 1] for i, w in enumerate(argv[:-1]) if w == "--out"), None)
    argv += smoke_overrides(argv, trained.get(out, 0))
    if smoke_overrides(argv, 0) and out:
        trained[out] = trained.get(out, 0) + 1
    err = io.StringIO()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(argv)
    except SystemExit as exc:  # --help, --version
        code = exc.code or 0
    finally:
        for key, value in saved.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    return code, err.getvalue()


def _cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (a shared machine's wall time misleads)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_page(page: Path, folder: Path) -> dict[str, int]:
    """Runs the page's untagged, concrete commands in order in `folder`, which holds the checkout's configs/
    (for `-c configs/...`), so that each command finds what the ones above it wrote. Returns the counts of
    lines run and skipped."""
    folder.mkdir(parents=True)
    (folder / "configs").symlink_to(REPO / "configs")
    counts, trained, failures = {"run": 0, "template": 0, **{tag: 0 for tag in TAGS}}, {}, []
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for line in page_lines(page):
            if line.tags or line.template:
                counts[line.tags[0] if line.tags else "template"] += 1
                continue
            started, cpu = time.perf_counter(), _cpu_seconds()
            code, err = run_line(line, folder, trained)
            counts["run"] += 1
            print(f"{time.perf_counter() - started:6.1f} s ({_cpu_seconds() - cpu:5.1f} s CPU)  {line.where}: "
                  f"{shlex.join(line.words)[:90]}")
            if code != 0:
                failures.append(f"{line.where}: {shlex.join(line.words)} -> exit {code}: {err.strip()[-600:]}")
    finally:
        os.chdir(cwd)
    assert not failures, "\n".join(failures)
    return counts


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_documented_commands_run(page, tmp_path):
    counts = run_page(page, tmp_path / "checkout")
    print(f"{page.relative_to(REPO)}: {counts}")


def test_the_pages_run_most_of_their_commands_and_tag_the_rest():
    lines = [line for page in PAGES for line in page_lines(page)]
    ran = [line for line in lines if not line.tags and not line.template]
    assert len(ran) >= 40, len(ran)
    quick_start = [line.words[:2] for line in page_lines(REPO / "README.md") if not line.tags]
    assert ["bash", "hw1_1.sh"] in quick_start and ["bash", "hw1_3.sh"] in quick_start


def test_tags_and_templates_are_recognised(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```bash\ndlcv models   # [GPU]\n# [course data]: the rest of this block\n"
                    "dlcv eval acc a.csv b.csv\n```\n```bash\nbash hw1_1.sh IMAGE_DIR out.csv\n"
                    "X=runs/a bash hw1_3.sh in out\ndlcv viz arch resnet18 --out $OUT\n```\n")
    found = page_lines(page)
    assert [(line.words[:2], line.tags, line.template) for line in found] == [
        (["dlcv", "models"], ["GPU"], False), (["dlcv", "eval"], ["course data"], False),
        (["bash", "hw1_1.sh"], [], True), (["bash", "hw1_3.sh"], [], False), (["dlcv", "viz"], [], True)]
    assert found[3].env == {"X": "runs/a"}


def test_smoke_overrides_are_the_tasks_own_keys():
    assert smoke_overrides(["ssl", "pretrain", "-c", "p2_byol_cpu"], 0) == config_mod.set_args([
        "train.max_steps=1", "device=cpu", "train.batch_size=4", "data.image_size=32", "data.input_size=null",
        "snapshot.figures=false"])
    # (ssl has no limit_val, crop_size or tta)
    assert "train.max_steps=3" in smoke_overrides(["segment", "train", "--out", "r", "--resume"], 2)
    assert smoke_overrides(["segment", "miou", "a", "b"], 0) == []


# -- the README's figures and their JSON ------------------------------------------------------------------

RESULTS = REPO / "benchmarks" / "results"


def _json(name: str) -> dict:
    return json.loads((RESULTS / name).read_text(encoding="utf-8"))


def _kit_setting(setting: str) -> float:
    """A setting's final accuracy in the GPU kit's P2 table (its table.md, kept in the JSON)."""
    row = next(line for line in _json("gpu_p2_twocall_h200.json")["table_md"].splitlines()
               if line.startswith(f"| {setting} |"))
    return float(row.split("|")[4])


def _cpu_settings(setting: str) -> list[float]:
    """Every CPU run of a transfer setting: the Xeon's two fine-tuning seeds, the Zen 5's two BYOL seeds."""
    tables = [_json("p2_cpu_recipe_xeon.json")["table_seed0"], _json("p2_cpu_recipe_xeon.json")["table_finetune_seed1"],
              _json("p2_cpu_recipe_zen5_views.json")["table_finetune_seed0"],
              _json("p2_cpu_recipe_zen5_byol_seed1.json")["table_finetune_seed0"]]
    return [t[setting]["val_acc"] for t in tables if setting in t]


ZEN5_TABLE, XEON_TABLE = "p2_cpu_recipe_zen5_views.json", "p2_cpu_recipe_xeon.json"
# (row of the README's results table, its column) -> the figure in the JSON
README_CELLS = {
    **{(f"P2 {s}:", 4): lambda s=s: _json(ZEN5_TABLE)["table_finetune_seed0"][s]["val_acc"] for s in "ACE"},
    **{(f"P2 {s}:", 4): lambda s=s: _json(XEON_TABLE)["table_seed0"][s]["val_acc"] for s in "BD"},
    **{(f"P2 {s}:", 5): lambda s=s: _kit_setting(s) for s in "ABCDE"},
    ("P3 B:", 5): lambda: _json("gpu_p3_h200.json")["steps"][0]["best"]["val_miou"],
    ("P3 A:", 4): lambda: _json("p3_fcn32s_cpu_zen2.json")["val_miou"],
}


def readme_cell(row: str, column: int) -> float:
    line = next(line for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines()
                if line.startswith(f"| {row}"))
    return float(re.search(r"\d+\.\d+", line.split(" | ")[column]).group())


@pytest.mark.parametrize("row,column", README_CELLS, ids=[f"{r}{c}" for r, c in README_CELLS])
def test_the_readmes_results_equal_their_json(row, column):
    assert readme_cell(row, column) == round(README_CELLS[row, column](), 4)


def test_the_readmes_notes_equal_their_json():
    text = " ".join((REPO / "README.md").read_text(encoding="utf-8").split())
    means = re.search(r"A (\d\.\d+) \(3 runs\), C (\d\.\d+) \(4\), E (\d\.\d+) \(4\)", text).groups()
    assert [float(m) for m in means] == [round(sum(v) / len(v), 3) for v in map(_cpu_settings, "ACE")]
    seed1 = next(s["miou"] for s in _json("p3_tta_scales_zen5.json")["subsets"] if s["scales"] == [0.75, 1.0])
    assert f"seed 1 {seed1:.4f}" in text
    miou = next(step for step in _json("gpu_p3_h200.json")["steps"] if step["name"] == "miou")["output"][-1]
    assert f"`dlcv segment miou` on its masks {miou.split()[-1]}" in text  # mean_iou: 0.739868


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces -> hyphens."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


LINKS = [(f"{path.relative_to(REPO)}:{number}", (path.parent / target) if target else path, anchor)
         for path in DOCS
         for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
         for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]*))?\)", line)
         if not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("where,target,anchor", LINKS, ids=[where for where, *_ in LINKS])
def test_relative_links_point_at_files_and_headings(where, target, anchor):
    assert target.exists(), f"{where}: {target} does not exist"
    if anchor:
        assert anchor in anchors(target), f"{where}: {target.name} has no heading #{anchor}"


def test_anchors_follow_githubs_rule(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("# The README's picture\n## Install and test (make)\nnot a # heading\n")
    assert anchors(doc) == {"the-readmes-picture", "install-and-test-make"}
