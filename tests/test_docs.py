"""The documentation is checked like code: README.md stays an index, every relative link in
README.md and docs/*.md resolves (and its #anchor names a heading of the page it points to),
every `deepfake-detector ...` command shown in a code block parses with the real CLI parser
and is run by a test (each subcommand, with every flag a page shows for it: the tests that
run the command line are read for the argument lists they pass), every script a code block
runs exists, and README's test command is the one CI runs."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 220
SHELL_LANGS = {"", "bash", "sh", "shell", "console", "shell-session"}
OPERATORS = {"&&", "||", "|", ";", "&"}
REDIRECTS = {">", ">>", "<", "2>", "2>>", "&>"}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def fenced_blocks(text: str):
    """(language, first line number, lines) of every fenced code block (``` or ~~~, indented too)."""
    blocks, current = [], None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if current is None:
            m = re.match(r"(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if m:
                current = (m.group(1), m.group(2).lower(), number + 1, [])
        elif stripped.startswith(current[0]) and not stripped.strip(current[0][0]):
            blocks.append((current[1], current[2], current[3]))
            current = None
        else:
            current[3].append(line)
    if current is not None:
        raise AssertionError(f"a code block opened at line {current[2] - 1} is never closed")
    return blocks


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans (lines kept, so numbers hold)."""
    joined = "\n".join(prose_lines_keep_headings(text, keep_numbers=True))
    return re.sub(r"(`+)(?:(?!\1).)+?\1", lambda m: re.sub(r"[^\n]", " ", m.group(0)), joined, flags=re.S)


def inline_code(text: str) -> list[tuple[int, str]]:
    """(line, content) of the inline code spans outside fenced blocks (a span may run over lines)."""
    blanked = prose_lines_keep_headings(text, keep_numbers=True)
    joined = "\n".join(blanked)
    return [(joined.count("\n", 0, m.start()) + 1, m.group(2))
            for m in re.finditer(r"(`+)((?:(?!\1).)+?)\1", joined, flags=re.S)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation out, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[`*]", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines_keep_headings(page.read_text(encoding="utf-8")):
        m = re.match(r" {0,3}(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def prose_lines_keep_headings(text: str, keep_numbers: bool = False) -> list[str]:
    """Lines outside fenced code blocks, inline code kept (blank lines in their place with
    ``keep_numbers``, so line numbers hold)."""
    out, fence = [], None
    for line in text.splitlines():
        stripped = line.strip()
        m = re.match(r"(`{3,}|~{3,})", stripped)
        if fence is None and m:
            fence = m.group(1)
        elif fence is not None:
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = None
        else:
            out.append(line)
            continue
        if keep_numbers:
            out.append("")
    return out


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)


def links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every markdown link and image, inline or reference-style, outside code."""
    text = prose(page.read_text(encoding="utf-8"))
    found = []
    for pattern in (LINK, REFERENCE):
        for m in pattern.finditer(text):
            found.append((text.count("\n", 0, m.start()) + 1, m.group(1)))
    return found


def relative_links():
    for page in PAGES:
        for line, target in links(page):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http(s), mailto...
                continue
            yield pytest.param(page, line, target, id=f"{rel(page)}:{line}:{target}")


@pytest.mark.parametrize("page, line, target", list(relative_links()))
def test_relative_link_resolves(page, line, target):
    path, _, fragment = target.partition("#")
    dest = page if not path else (page.parent / path).resolve()
    where = f"{rel(page)}, line {line}: link {target!r}"
    assert dest.exists(), f"{where}: {path} does not exist (looked at {dest})"
    if path:
        assert dest == ROOT or ROOT in dest.parents, f"{where} points out of the repository"
    if fragment and dest.suffix == ".md":
        assert fragment in anchors(dest), (
            f"{where}: no heading of {rel(dest)} has the anchor #{fragment} "
            f"(it has: {', '.join(sorted(anchors(dest)))})")


def test_readme_is_an_index():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it an index of at most {README_MAX_LINES} "
        "and move the rest to a page under docs/")


def shell_lines(page: Path):
    """(line number, command line) of every shell code block: continuations joined, `$ ` dropped."""
    for lang, start, lines in fenced_blocks(page.read_text(encoding="utf-8")):
        if lang not in SHELL_LANGS:
            continue
        buffer, first = "", None
        for offset, raw in enumerate(lines):
            line = raw.strip()
            if first is None:
                if line.startswith("$ "):
                    line = line[2:]
                first = start + offset
            if line.endswith("\\"):
                buffer += line[:-1] + " "
                continue
            buffer += line
            if buffer.strip():
                yield first, buffer.strip()
            buffer, first = "", None
        if buffer.strip():
            yield first, buffer.strip()


def commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line: split at &&, ||, |, ; and &, stopped at a # comment,
    each cut at its first redirection, leading VAR=value assignments dropped."""
    line = re.sub(r"<([A-Za-z][\w.-]*)>", lambda m: m.group(1).upper(), line)  # <placeholder>
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    out, current, redirected = [], [], False
    for token in lexer:
        if token in OPERATORS:
            out.append(current)
            current, redirected = [], False
        elif token in REDIRECTS or redirected:
            redirected = True
        else:
            current.append(token)
    out.append(current)
    cleaned = []
    for argv in out:
        while argv and re.match(r"[A-Za-z_]\w*=", argv[0]):
            argv = argv[1:]
        if argv:
            cleaned.append(argv)
    return cleaned


def cli_commands():
    for page in PAGES:
        for number, line in shell_lines(page):
            if not re.search(r"(?<![\w-])deepfake-detector(?![\w-])", line):
                continue
            try:
                found = [argv for argv in commands(line) if argv[0] == "deepfake-detector"]
            except ValueError as error:  # an unclosed quote: the line is wrong as shell too
                found = [["deepfake-detector", f"<shlex: {error}>"]]
            for argv in found:
                yield pytest.param(page, number, argv, id=f"{rel(page)}:{number}:{' '.join(argv[:2])}")


CLI_COMMANDS = list(cli_commands())


def test_docs_show_commands():
    assert len(CLI_COMMANDS) >= 10, "the docs should show deepfake-detector commands in code blocks"


@pytest.fixture(scope="module")
def parser():
    from deepfake_detector.cli import build_parser

    return build_parser()


@pytest.mark.parametrize("page, line, argv", CLI_COMMANDS)
def test_cli_command_parses(parser, capsys, page, line, argv):
    try:
        parser.parse_args(argv[1:])
    except SystemExit as exit:
        if exit.code not in (0, None):  # --help and --version exit 0
            message = capsys.readouterr().err.strip().splitlines()
            pytest.fail(f"{rel(page)}, line {line}: `{shlex.join(argv)}` does not parse: "
                        f"{message[-1] if message else exit}", pytrace=False)


# --- every subcommand and flag the docs show is run by a test -------------------------------
RUNNERS = {"main", "cli_main", "run_cli", "run"}  # the tests' ways of running the command line


def _strings(nodes) -> list:
    """The string constants of an argument list (None for anything computed), with ``*[...]``
    and ``[...] if c else [...]`` unpacked."""
    out = []
    for e in nodes:
        if isinstance(e, ast.Constant) and isinstance(e.value, str):
            out.append(e.value)
        elif isinstance(e, ast.Starred) and isinstance(e.value, (ast.List, ast.Tuple)):
            out += _strings(e.value.elts)
        elif isinstance(e, ast.Starred) and isinstance(e.value, ast.IfExp):
            out += [s for br in (e.value.body, e.value.orelse) if isinstance(br, (ast.List, ast.Tuple))
                    for s in _strings(br.elts)]
        else:
            out.append(None)
    return out


def flags_run_by_tests(subcommands) -> dict[str, set[str]]:
    """{subcommand: the flags some test passes to it} over every call of a command-line runner
    in tests/ whose first argument is a subcommand's name."""
    ran: dict[str, set[str]] = {}
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            fn = node.func
            if (fn.id if isinstance(fn, ast.Name) else getattr(fn, "attr", "")) not in RUNNERS:
                continue
            first = node.args[0]
            args = _strings(first.elts) if isinstance(first, (ast.List, ast.Tuple)) else _strings(node.args)
            if args and args[0] in subcommands:
                ran.setdefault(args[0], set()).update(a.split("=")[0] for a in args[1:] if a and a.startswith("-"))
    return ran


def test_every_flag_the_docs_show_is_run_by_a_test(parser):
    subcommands = set(next(a for a in parser._actions if a.dest == "command").choices)
    ran = flags_run_by_tests(subcommands)
    missing = []
    for param in CLI_COMMANDS:
        page, line, argv = param.values
        if len(argv) < 2 or argv[1] not in subcommands:
            continue
        sub = argv[1]
        if sub not in ran:
            missing.append(f"{rel(page)}:{line}: `{sub}` is never run by a test")
        for a in argv[2:]:
            flag = a.split("=")[0]
            if a.startswith("-") and flag not in ("-h", "--help") and flag not in ran.get(sub, set()):
                missing.append(f"{rel(page)}:{line}: no test runs `{sub} {flag}`")
    assert not missing, "\n".join(dict.fromkeys(missing))


SCRIPT = re.compile(r"(?:^|[\s;&|(])(?:python3?|bash|sh)\s+(?!-)((?:\./)?(?:scripts|benchmarks|\.ci)/[^\s;&|<>'\")]+)")


def scripts_named():
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        shown = [(start, "\n".join(lines)) for lang, start, lines in fenced_blocks(text)]
        shown += inline_code(text)
        for start, code in shown:
            for m in SCRIPT.finditer(code):
                where = f"{rel(page)}:{start + code.count(chr(10), 0, m.start())}"
                yield pytest.param(page, where, m.group(1), id=f"{where}:{m.group(1)}")


SCRIPTS = list(scripts_named())


def test_docs_name_scripts():
    assert SCRIPTS, "the docs should show how to run the scripts and benchmarks"


@pytest.mark.parametrize("page, where, script", SCRIPTS)
def test_script_shown_exists(page, where, script):
    assert (ROOT / script).is_file(), f"{where}: `{script}` is not a file of the repository"


def test_readme_test_command_is_what_ci_runs():
    readme = ROOT / "README.md"
    test_lines = [line for _, line in shell_lines(readme) if re.search(r"\bpytest\b", line)]
    assert len(test_lines) == 1, f"README.md should show one test command in a code block, found {test_lines}"
    ci = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines() if line.strip()]
    assert ci, ".ci/run is empty"
    assert ci[-1] == test_lines[0], (
        f"README.md's test command {test_lines[0]!r} is not the last line of .ci/run ({ci[-1]!r}); "
        ".ci/run runs it verbatim")
