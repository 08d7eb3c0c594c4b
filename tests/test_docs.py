"""The documents the agent lives by name only files, commands and variables that exist.

program.md, AGENTS.md and README.md are read as the agent reads them: every inline code span,
every line of a fenced block and every relative link. Repository paths must exist (and not be
git-ignored, so a fresh clone has them); run-time files must be git-ignored instead. Every
`python X.py ...` command is parsed by X's own argparse parser without running X; `python -c`
snippets run; AR_*/USE_* variables must be read by the harness; pip and uv extras must be declared
in pyproject.toml; git subcommands and their long options must be real; other tools must be
installed or declared. AGENTS.md's tables of summary keys, results.tsv columns and --json keys
are compared with what train.py and analysis.py really produce.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from harness import AGENTS, PROGRAM, REPO

from labbook import ledger, outcomes

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

DOCS = ("program.md", "AGENTS.md", "README.md")
SHIPPED = {"program.md": PROGRAM, "AGENTS.md": AGENTS}  # as shipped: an effort's checkout has the agent's
SUBMODULE = "x-transformers"
LIBRARY = "x_transformers"  # the installed package: AGENTS.md cites its source files

# Files the harness writes while it runs: never in a clone, always git-ignored.
RUNTIME_FILES = (
    "results.tsv",
    "results.tsv.lock",
    "run.log",
    "metrics.jsonl",
    "checkpoint.pt",
    "checkpoints",
    "progress.png",
    "memory.png",
    "curves.png",
    "timeline.png",
    "best_vs_baseline.png",
    "analysis.ipynb",
    "analysis.html",
    "refusals.log",
    "worktrees",
    ".venv",
)
PATH_SUFFIXES = {
    ".py", ".md", ".toml", ".lock", ".yaml", ".yml", ".tsv", ".jsonl", ".json", ".pt", ".png",
    ".ipynb", ".log", ".txt", ".sh", ".cfg",
}  # fmt: skip
PRECISION_VARS = {"USE_FP8", "USE_FP16"}
BRANCH_PREFIX = "autoresearch/"  # research branches, e.g. autoresearch/mar5-gpu0: not paths
# Tools a doc may name: the package that provides each, which pyproject.toml must declare
# when the tool is not installed here.
TOOL_PACKAGES = {"jupytext": "jupytext", "torchrun": "torch", "sky": "skypilot", "ruff": "ruff", "pytest": "pytest"}
SHELL_TOOLS = {"grep", "tail", "kill", "pgrep", "pkill"}
CHECKED_COMMANDS = {"python", "python3", "pip", "uv", "git", *TOOL_PACKAGES, *SHELL_TOOLS}
ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=")
ENV_NAME = re.compile(r"\b(?:AR|USE)_[A-Z0-9_]*[A-Z0-9]\b")
PLACEHOLDER = re.compile(r"<[^<>\s]+>")


# ---------------------------------------------------------------------------
# Reading the documents
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Snippet:
    doc: str
    text: str  # an inline code span, or one line of a fenced block


def split_fences(text):
    """(text outside fenced blocks, lines inside them)."""
    outside, inside, fenced = [], [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            inside.append(line)
        else:
            outside.append(line)
    return "\n".join(outside), inside


def snippets_of(doc, text):
    prose, fenced_lines = split_fences(text)
    found = [Snippet(doc, line.strip()) for line in fenced_lines if line.strip()]
    found += [Snippet(doc, span.strip()) for span in re.findall(r"`([^`\n]+)`", prose)]
    return found


def link_targets(text):
    """Relative targets of Markdown links, anchors dropped."""
    prose, _ = split_fences(text)
    targets = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", prose)]
    return [t for t in targets if t and "://" not in t and not t.startswith("mailto:")]


@cache
def documents():
    return {doc: SHIPPED.get(doc, REPO / doc).read_text() for doc in DOCS if (REPO / doc).exists()}


@cache
def all_snippets():
    return [s for doc, text in documents().items() for s in snippets_of(doc, text)]


def test_the_three_documents_exist():
    assert set(documents()) == set(DOCS), f"missing: {set(DOCS) - set(documents())}"


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    doc: str
    source: str  # the snippet it came from
    argv: tuple  # without the VAR=value assignments in front


SEPARATORS = {"|", "||", "&&", ";", "&", "(", ")"}
REDIRECTIONS = {">", ">>", "<", ">&", "&>"}


def command_lines(text):
    """Word lists of the commands in a shell line, split at |, &&, ; and without redirections
    or comments. None when the text is not shell (unbalanced quotes)."""
    lexer = shlex.shlex(re.sub(r"(?<=\s)\d+(?=>)", "", text), posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, "#"
    try:
        tokens = list(lexer)
    except ValueError:
        return None
    lines, words, skip = [], [], False
    for token in tokens:
        if skip:
            skip = False
        elif token in REDIRECTIONS:
            skip = True
        elif token in SEPARATORS:
            lines, words = lines + [words], []
        else:
            words.append(token)
    return [w for w in lines + [words] if w]


def commands_in(snippet):
    """The commands of a snippet whose first word is a tool this module checks."""
    found = []
    for words in command_lines(PLACEHOLDER.sub("x", snippet.text)) or []:
        while words and ASSIGNMENT.match(words[0]):
            words = words[1:]
        if words[:2] == ["uv", "run"]:
            words = words[2:]
        if words and words[0] in CHECKED_COMMANDS:
            found.append(Command(snippet.doc, snippet.text, tuple(words)))
    return found


@cache
def all_commands():
    return [c for s in all_snippets() for c in commands_in(s)]


def python_commands():
    return [c for c in all_commands() if c.argv[0] in ("python", "python3")]


def script_commands():
    """(command, script path, arguments) of every `python some/script.py ...`."""
    found = []
    for c in python_commands():
        if len(c.argv) > 1 and c.argv[1].endswith(".py"):
            found.append((c, c.argv[1], list(c.argv[2:])))
    return found


# The shim parses argv with the script's own argparse parser and stops right there: when the
# outermost parse succeeds it exits before the script does any work.
PARSE_SHIM = textwrap.dedent(
    """
    import argparse, io, json, os, runpy, sys, contextlib
    script, cases = sys.argv[1], json.loads(sys.argv[2])
    class Parsed(BaseException):
        pass
    original, depth = argparse.ArgumentParser.parse_known_args, [0]
    def parse_known_args(self, args=None, namespace=None):
        depth[0] += 1
        try:
            namespace, extras = original(self, args, namespace)
        finally:
            depth[0] -= 1
        if depth[0] == 0:
            if extras:
                self.error("unrecognized arguments: " + " ".join(extras))
            raise Parsed()
        return namespace, extras
    argparse.ArgumentParser.parse_known_args = parse_known_args
    results = []
    for args in cases:
        sys.argv = [script, *args]
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                runpy.run_path(script, run_name="__main__")
            results.append("the script ran to the end without parsing its arguments")
        except Parsed:
            results.append(None)
        except SystemExit as e:
            if e.code == 0:  # --help: the parser got that far
                results.append(None)
                continue
            results.append(err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit {e.code}")
        except Exception as e:
            results.append(f"{type(e).__name__}: {e}")
    print(json.dumps(results))
    sys.stdout.flush()
    os._exit(0)
    """
)


def parse_problems(script, arg_lists, cwd):
    """For each argument list: None when the script's parser accepts it, else the error."""
    proc = subprocess.run(
        [sys.executable, "-c", PARSE_SHIM, str(REPO / script), json.dumps(arg_lists)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{script}: the parse check itself failed: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def script_problems(commands, cwd):
    problems, by_script = [], {}
    for command, script, args in commands:
        path = REPO / script
        if not path.is_file():
            problems.append(f"{command.doc}: `{command.source}`: {script} does not exist")
        elif script == "train.py":
            if args not in ([], ["--prepare-data"]):
                problems.append(f"{command.doc}: `{command.source}`: train.py takes no arguments but --prepare-data")
        elif args:
            if not builds_a_parser(path):
                problems.append(f"{command.doc}: `{command.source}`: {script} has no argparse parser to check against")
            else:
                by_script.setdefault(script, []).append((command, args))
    for script, cases in by_script.items():
        found = parse_problems(script, [a for _, a in cases], cwd)
        # `python analysis.py record` in prose names a subcommand: it must exist, its options are elsewhere
        mentions = [i for i, (_, args) in enumerate(cases) if is_mention(args, found[i])]
        for i, problem in zip(mentions, parse_problems(script, [cases[i][1] + ["--help"] for i in mentions], cwd)):
            found[i] = problem
        for (command, _), problem in zip(cases, found):
            if problem:
                problems.append(f"{command.doc}: `{command.source}`: {problem}")
    return problems


def builds_a_parser(script):
    """Whether a script, or a labbook module it imports, has an argparse parser."""
    text = script.read_text()
    modules = re.findall(r"^(?:from|import) labbook\.(\w+)", text, flags=re.M)
    return any(
        "argparse" in source for source in [text, *((REPO / "labbook" / f"{m}.py").read_text() for m in modules)]
    )


def is_mention(args, problem):
    """A bare `script subcommand` that only lacks its required arguments."""
    return bool(problem) and "arguments are required" in problem and len(args) == 1 and not args[0].startswith("-")


def test_every_python_script_command_in_the_docs_parses_with_the_scripts_own_arguments(tmp_path):
    commands = script_commands()
    assert any(c.doc == "program.md" and s == "analysis.py" for c, s, _ in commands), "no analysis.py command found"
    problems = script_problems(commands, tmp_path)
    assert not problems, "\n".join(problems)


def run_snippet(code):
    """None when a `python -c` snippet runs, else its error. Imports and prints run in this process
    (torch is imported once, not once per snippet); anything else runs in a subprocess."""
    body = ast.parse(code).body
    simple = all(
        isinstance(node, ast.Import | ast.ImportFrom)
        or (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and getattr(node.value.func, "id", "") == "print"
        )
        for node in body
    )
    if simple:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(code, "<doc snippet>", "exec"), {})
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        return None
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return None if proc.returncode == 0 else proc.stderr.strip().splitlines()[-1]


def test_every_python_dash_c_snippet_runs_and_every_dash_m_module_is_installed():
    problems, snippets = [], {}
    for c in python_commands():
        if len(c.argv) > 2 and c.argv[1] == "-c":
            snippets.setdefault(c.argv[2], c)
        elif len(c.argv) > 2 and c.argv[1] == "-m" and importlib.util.find_spec(c.argv[2]) is None:
            problems.append(f"{c.doc}: `{c.source}`: no module {c.argv[2]}")
    assert snippets, "no `python -c` found: the docs should show how to check the dependencies"
    for code, c in snippets.items():
        if error := run_snippet(code):
            problems.append(f"{c.doc}: `{c.source}` fails: {error}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# Environment variables, extras, git, other tools
# ---------------------------------------------------------------------------


def train_env_vars():
    """ENV_VARS of the harness, read from prepare.py's source without importing torch."""
    for node in ast.parse((REPO / "prepare.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ENV_VARS" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("prepare.py has no ENV_VARS tuple")


def variable_read_by_a_tool(name):
    """Whether a repository script other than the harness reads this variable (e.g. AR_WORKER)."""
    scripts = [REPO / "analysis.py", *REPO.glob("labbook/*.py"), *REPO.glob("tools/*.py"), *REPO.glob("bench/*.py")]
    return any(re.search(rf"['\"]{name}['\"]", p.read_text()) for p in scripts if p.is_file())


def env_problems(snippets):
    known = train_env_vars() | PRECISION_VARS
    problems = []
    for s in snippets:
        for name in ENV_NAME.findall(s.text):
            if name not in known and not variable_read_by_a_tool(name):
                problems.append(f"{s.doc}: `{s.text}`: {name} is read by neither prepare.py nor a tool")
    return sorted(set(problems))


def test_every_environment_variable_in_the_docs_is_read_by_the_harness():
    problems = env_problems(all_snippets())
    assert not problems, "\n".join(problems)


@cache
def pyproject():
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def declared_extras():
    return set(pyproject()["project"].get("optional-dependencies", {}))


def extras_named(argv):
    """Extras a `pip install -e ".[a,b]"` or `uv sync --extra a` asks for."""
    names = []
    for i, word in enumerate(argv):
        if m := re.fullmatch(r"\.\[([\w,\-]+)\]", word):
            names += m.group(1).split(",")
        if word == "--extra" and i + 1 < len(argv):
            names.append(argv[i + 1])
    return names


def test_every_pip_or_uv_extra_in_the_docs_is_declared_in_pyproject():
    installs = [c for c in all_commands() if c.argv[0] in ("pip", "uv")]
    assert any(extras_named(c.argv) for c in installs), "no `pip install -e .[extra]` found in the docs"
    problems = [
        f"{c.doc}: `{c.source}`: extra {name!r} is not in pyproject.toml"
        for c in installs
        for name in extras_named(c.argv)
        if name not in declared_extras()
    ]
    assert not problems, "\n".join(problems)


@cache
def git_subcommands():
    out = subprocess.run(["git", "--list-cmds=main,nohelpers"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def unknown_git_option(words, scratch):
    """git's own complaint about an option of `git <words>`, or None. Run with -h in an empty
    scratch repository: git parses every option, then prints its usage instead of acting."""
    proc = subprocess.run(["git", "-C", str(scratch), *words, "-h"], capture_output=True, text=True, timeout=30)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if re.search(r"unknown (option|switch)", line)]
    return errors[0] if errors else None


def git_problems(commands, scratch):
    subprocess.run(["git", "init", "-q", str(scratch)], check=True)
    problems = []
    for c in commands:
        words = list(c.argv[1:])
        while words and words[0] in ("-C", "-c"):
            words = words[2:]
        if not words:
            continue
        if words[0] not in git_subcommands():
            problems.append(f"{c.doc}: `{c.source}`: {words[0]!r} is not a git subcommand")
        elif error := unknown_git_option(words, scratch):
            problems.append(f"{c.doc}: `{c.source}`: {error}")
    return problems


def test_every_git_command_in_the_docs_is_a_real_subcommand_with_real_options(tmp_path):
    commands = [c for c in all_commands() if c.argv[0] == "git"]
    assert any(c.doc == "program.md" for c in commands), "no git command found in program.md"
    problems = git_problems(commands, tmp_path / "scratch")
    assert not problems, "\n".join(problems)


def declared_packages():
    project = pyproject()["project"]
    specs = project.get("dependencies", []) + [
        d for ds in project.get("optional-dependencies", {}).values() for d in ds
    ]
    return {re.split(r"[\s<>=!~\[;]", spec, maxsplit=1)[0].lower() for spec in specs}


def test_tools_named_in_the_docs_are_installed_or_declared():
    problems = []
    for c in all_commands():
        tool = c.argv[0]
        if tool in SHELL_TOOLS - {"kill"} and shutil.which(tool) is None:
            problems.append(f"{c.doc}: `{c.source}`: {tool} is not installed")
        if tool in TOOL_PACKAGES and shutil.which(tool) is None and TOOL_PACKAGES[tool] not in declared_packages():
            problems.append(f"{c.doc}: `{c.source}`: {tool} is neither installed nor declared in pyproject.toml")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------


def path_candidates(snippet):
    """Tokens of a snippet that name a file or directory of the repository."""
    if snippet.text.startswith("git "):
        return []  # branch names like autoresearch/x and revisions are not paths
    tokens = []
    for raw in re.split(r"[\s=,;()\[\]\"'`]+", snippet.text):
        token = raw.rstrip(".:")
        if not token or any(ch in token for ch in "<>*{}$~\\") or "://" in token or token.startswith(("/", "-")):
            continue
        if not re.fullmatch(r"\.?[\w][\w.\-]*(/[\w.\-]+)*/?", token) or token.startswith(BRANCH_PREFIX):
            continue
        if "/" in token or Path(token).suffix in PATH_SUFFIXES:
            tokens.append(token)
    return tokens


def is_runtime_file(token):
    return token.split("/")[0] in RUNTIME_FILES or token.startswith("bench/results/")


@cache
def library_root():
    spec = importlib.util.find_spec(LIBRARY)
    return Path(spec.origin).parent.parent if spec and spec.origin else None


def submodule_checked_out():
    return any((REPO / SUBMODULE).iterdir()) if (REPO / SUBMODULE).is_dir() else False


def path_exists(token):
    token = token.rstrip("/")
    if token.startswith(f"{SUBMODULE}/") and not submodule_checked_out():
        return f"path = {SUBMODULE}" in (REPO / ".gitmodules").read_text()  # content arrives with the submodule
    if token.startswith(f"{LIBRARY}/") and library_root():
        return (library_root() / token).exists()
    return (REPO / token).exists()


def git_ignored(paths):
    """The subset of `paths` that .gitignore ignores (whether or not they exist)."""
    if not paths:
        return set()
    proc = subprocess.run(
        ["git", "-C", str(REPO), "check-ignore", "--no-index", "--stdin"],
        input="\n".join(paths),
        capture_output=True,
        text=True,
    )
    return set(proc.stdout.split())


def named_paths():
    """(doc, token, where) of every path-like token and relative link in the docs."""
    found = [(s.doc, t, s.text) for s in all_snippets() for t in path_candidates(s)]
    found += [(doc, t, f"link ({t})") for doc, text in documents().items() for t in link_targets(text)]
    return found


def path_problems(found):
    problems = []
    repo_paths = [(doc, t, where) for doc, t, where in found if not is_runtime_file(t)]
    for doc, token, where in repo_paths:
        if not path_exists(token):
            problems.append(f"{doc}: `{where}`: {token} does not exist")
    ignored = git_ignored(sorted({t.rstrip("/") for _, t, _ in repo_paths if not t.startswith(LIBRARY + "/")}))
    problems += [
        f"{doc}: `{where}`: {t} is git-ignored, so a clone lacks it"
        for doc, t, where in repo_paths
        if t.rstrip("/") in ignored
    ]
    return sorted(set(problems))


def test_every_repository_path_named_in_the_docs_exists_and_is_not_ignored():
    found = named_paths()
    assert any(t == "train.py" for _, t, _ in found), "no path found in the docs: the extractor is broken"
    problems = path_problems(found)
    assert not problems, "\n".join(problems)


def test_run_time_files_named_in_the_docs_are_git_ignored():
    named = {t.rstrip("/") for _, t, _ in named_paths() if is_runtime_file(t)}
    assert "results.tsv" in named, "the docs never name results.tsv: the extractor is broken"
    # a directory is ignored when a file inside it is
    probes = {name: f"{name}/x" if name in ("checkpoints", "worktrees") else name for name in named}
    missing = sorted(name for name, probe in probes.items() if probe not in git_ignored(sorted(probes.values())))
    assert not missing, f"named in the docs, written at run time, but not in .gitignore: {missing}"


# ---------------------------------------------------------------------------
# AGENTS.md tables against what the code produces
# ---------------------------------------------------------------------------


def summary_keys():
    """The harness's SUMMARY_FORMAT keys, in order, read from prepare.py's source."""
    for node in ast.parse((REPO / "prepare.py").read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SUMMARY_FORMAT" for t in node.targets):
            return [k.value for k in node.value.keys]
    raise AssertionError("prepare.py has no SUMMARY_FORMAT")


def table_names(doc_text, heading):
    """Backticked names in the first column of the first table under `heading`, in order."""
    section = doc_text.split(heading, 1)[1]
    rows = re.findall(r"^\|([^|\n]*)\|", section.split("\n#", 1)[0], flags=re.M)
    names = []
    for cell in rows[2:]:  # header and separator rows first
        names += re.findall(r"`([^`]+)`", cell)
    return names


def test_agents_md_documents_every_summary_key_in_the_order_train_py_prints_them():
    names = table_names(documents()["AGENTS.md"], "### The summary block")
    assert names == summary_keys()


def test_summary_keys_shown_or_grepped_in_the_docs_are_ones_train_py_prints():
    keys, problems = summary_keys(), []
    for doc, text in documents().items():
        _, fenced = split_fences(text)
        shown = [m.group(1) for line in fenced if (m := re.match(r"^([a-z_0-9]+):\s{2,}\S", line))]
        if shown and [k for k in keys if k in shown] != shown:
            problems.append(f"{doc}: summary example keys {shown} are not train.py's keys in its order")
        for s in (s for s in all_snippets() if s.doc == doc and s.text.startswith("grep")):
            problems += [f"{doc}: `{s.text}` greps {k}" for k in re.findall(r"\^(\w+):", s.text) if k not in keys]
    assert not problems, "\n".join(problems)


def test_agents_md_documents_every_results_tsv_column_in_order():
    names = table_names(documents()["AGENTS.md"], "## results.tsv,")
    assert names[: len(ledger.COLUMNS)] == list(ledger.COLUMNS)


def test_every_json_key_agents_md_documents_is_in_the_json_report(tmp_path):
    tsv = tmp_path / "results.tsv"
    tsv.write_text("\t".join(ledger.COLUMNS) + "\n")
    proc = subprocess.run(
        [sys.executable, str(REPO / "analysis.py"), "--tsv", str(tsv), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    paragraph = documents()["AGENTS.md"].split("`python analysis.py --json` (under 4 KB", 1)[1].split("\n\n", 1)[0]
    documented = [name for name in re.findall(r"`([a-z_]+)`", paragraph)]
    assert {"tip", "best", "sigma", "next", "tried"} <= set(documented)
    assert sorted(set(documented) - set(report)) == []


def test_agents_md_has_one_machine_block_that_tools_machine_py_can_fill():
    text = documents()["AGENTS.md"]
    begin, end = "<!-- BEGIN MACHINE (written by python tools/machine.py) -->", "<!-- END MACHINE -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    assert text.index(begin) < text.index(end)


def test_claude_md_is_one_line_that_sends_claude_code_to_program_md():
    lines = (REPO / "CLAUDE.md").read_text().strip().splitlines()
    assert len(lines) == 1 and "program.md" in lines[0]


def test_program_md_has_setup_resume_loop_rules_and_a_parallel_section():
    headings = re.findall(r"^## (.+)$", documents()["program.md"], flags=re.M)
    for wanted in (
        "Setup",
        "Resume",
        "The experiment loop",
        "What is off limits",
        "Several GPUs",
    ):
        assert wanted in headings, f"program.md lacks the section {wanted!r}"


# ---------------------------------------------------------------------------
# The checker itself: a broken document must be caught
# ---------------------------------------------------------------------------


BROKEN_DOC = """
Run `python analysis.py recrod --status keep --description "x"`, then `python analysis.py --jsn`.
Then `AR_SEEDS=1 python train.py --fast > run.log 2>&1` and `pip install -e ".[devel]"`.
Read `docs/nonexistent.md`, `git resett --hard HEAD~1` and `git reset --hrad HEAD~1`.
"""


def test_the_checker_catches_dead_commands_missing_files_and_unknown_variables(tmp_path):
    snippets = snippets_of("broken.md", BROKEN_DOC)
    commands = [c for s in snippets for c in commands_in(s)]
    scripts = [(c, c.argv[1], list(c.argv[2:])) for c in commands if c.argv[0] == "python"]
    found = script_problems(scripts, tmp_path)
    assert len(found) == 3, found  # recrod, --jsn, train.py --fast
    assert env_problems(snippets) == [
        f"broken.md: `{snippets[2].text}`: AR_SEEDS is read by neither prepare.py nor a tool"
    ]
    assert [n for c in commands if c.argv[0] == "pip" for n in extras_named(c.argv)] == ["devel"]
    assert "devel" not in declared_extras()
    assert len(git_problems([c for c in commands if c.argv[0] == "git"], tmp_path / "scratch")) == 2
    assert path_problems([("broken.md", t, s.text) for s in snippets for t in path_candidates(s)]) == [
        "broken.md: `docs/nonexistent.md`: docs/nonexistent.md does not exist"
    ]


def test_every_test_the_integrity_threat_model_cites_exists():
    text = (REPO / "docs" / "integrity.md").read_text()
    cited = re.findall(r"`(test_\w+\.py)(?:::(test_\w+))?", text)
    assert len(cited) > 20
    missing = []
    for module, name in cited:
        source = REPO / "tests" / module
        if not source.exists() or (name and f"def {name}(" not in source.read_text()):
            missing.append(f"{module}::{name}")
    assert not missing, missing


def test_program_md_and_agents_md_quote_the_keep_rule_as_the_code_renders_it():
    quote = "> " + outcomes.explain()
    for doc in ("program.md", "AGENTS.md"):
        assert quote in documents()[doc].splitlines(), f"{doc} does not quote decide --explain verbatim"
