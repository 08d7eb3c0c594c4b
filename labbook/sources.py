"""train.py as the keep rule compares it: its program (`program_key`: the syntax tree without
docstrings, so a commit that only changes comments or formatting is the same program), its size
(`statement_count`, for a declared simplification) and the knobs that set a step's work
(`step_knobs`), read at a commit from git."""

import ast
import hashlib

from labbook.base import git


def program_key(source):
    """A digest of train.py's program: its syntax tree without docstrings, so comments, docstrings
    and formatting do not change it; None when the source does not parse."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            node.body = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:12]


def statement_count(source):
    """Nodes of a Python source's syntax tree: comments, blank lines and formatting do not count;
    a removed statement, call argument or keyword (`attn_qk_norm=True`) does."""
    return sum(1 for _ in ast.walk(ast.parse(source)))


STEP_KNOBS = ("DIM", "DEPTH", "HEADS", "BATCH_SIZE", "TRAIN_SEQ_LEN")  # what one optimizer step computes


def step_knobs(source):
    """{name: value as written} of train.py's top-level STEP_KNOBS assignments ({} when it does not parse)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    return {
        node.targets[0].id: ast.unparse(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and len(node.targets) == 1
        and isinstance(node.targets[0], ast.Name)
        and node.targets[0].id in STEP_KNOBS
    }


# At a commit, from git


def source_at(commit, repo="."):
    """train.py's text at `commit`, or None."""
    return git(["show", f"{commit}:train.py"], repo) if commit else None


def statements_at(commit, repo="."):
    source = source_at(commit, repo)
    try:
        return statement_count(source) if source is not None else None
    except SyntaxError:
        return None


def programs_at(commits, repo="."):
    """{commit: program_key of its train.py} for the commits git knows."""
    sources = {commit: source_at(commit, repo) for commit in dict.fromkeys(commits)}
    return {commit: program_key(source) for commit, source in sources.items() if source is not None}
