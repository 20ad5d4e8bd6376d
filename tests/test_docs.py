"""The documentation stays true (no training runs): every `dlcv ...` command in README.md, docs/*.md and
CHANGELOG.md parses with the real argument parser; its recipe (`-c`) exists and belongs to the command's
task; every `--set` key is a key of that task, and concrete values resolve. Code blocks hold whole command
lines; inline code may also mention a command without its required arguments (`dlcv ssl table`), but its
words must still name one. Relative links point at files and headings that exist."""
from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

from conftest import REPO
from dlcv import config as config_mod, task_registry
from dlcv.cli import build_parser

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
    task = TASK_OF.get((args.group, getattr(args, "cmd", None)))
    if task is None:
        return
    recipe = {}
    if getattr(args, "config", None):
        source = args.config if Path(args.config).name == args.config else REPO / args.config
        try:
            recipe = config_mod.load_yaml(source)
        except config_mod.ConfigError as exc:
            raise AssertionError(f"-c {args.config}: {exc}") from None
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
