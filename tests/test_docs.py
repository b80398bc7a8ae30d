"""The README and docs/ hold together: every relative link and #anchor resolves, the README stays a front page.

Anchors are checked against GitHub's heading slugs, so a renamed heading or a moved page fails here rather than
as a dead link on the rendered site.
"""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_README_LINES = 320

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
# [text](target) and ![alt](target); the text may hold inline code but no nested brackets
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks: a '#' in a bash block is not a heading."""
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text lowercased, punctuation and symbols dropped except '-' and
    '_', each space a '-'. Letters and digits of any script stay (µ included)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = text.replace("`", "").replace("*", "").strip().lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor in a markdown text, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for _, line in _prose_lines(text):
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def broken_links(path: Path) -> list[str]:
    """Relative links in a markdown file whose file is missing or whose #anchor matches no heading there."""
    problems = []
    for number, line in _prose_lines(path.read_text(encoding="utf-8")):
        for target in _LINK.findall(_INLINE_CODE.sub("", line)):
            if _EXTERNAL.match(target):
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / unquote(file_part)).resolve() if file_part else path
            where = f"{path.name}:{number}: {target}"
            if not resolved.exists():
                problems.append(f"{where}: no such file")
                continue
            if anchor:
                if resolved.suffix != ".md":
                    problems.append(f"{where}: an anchor into a file that is not markdown")
                elif unquote(anchor).lower() not in anchors(resolved.read_text(encoding="utf-8")):
                    problems.append(f"{where}: no heading with this anchor")
    return problems


def _markdown_files() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _section(text: str, title: str) -> str:
    """The lines under a level-2 heading, up to the next level-2 heading."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == f"## {title}")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start + 1 : end])


def _fenced_commands(text: str) -> list[str]:
    """The command lines inside fenced blocks: not blank, not a comment."""
    commands, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif fenced and line.strip() and not line.lstrip().startswith("#"):
            commands.append(line.strip())
    return commands


# --- the checker itself, on small fake pages -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("heading", "expected"),
    [
        ("Quickstart", "quickstart"),
        ("µTransfer: tune the donor, train the target", "µtransfer-tune-the-donor-train-the-target"),
        ("µP's defaults that win", "µps-defaults-that-win"),
        ("Outputs and `summary.json`", "outputs-and-summaryjson"),
        ("Weights & Biases", "weights--biases"),
        ("µTransfer on a GPU: GPT-2 BPE, widths 256 → 2048", "µtransfer-on-a-gpu-gpt-2-bpe-widths-256--2048"),
        ("snake_case **bold** [a link](x.md)", "snake_case-bold-a-link"),
    ],
)
def test_slug_follows_github(heading, expected):
    assert slug(heading) == expected


def test_repeated_headings_get_numbered_anchors():
    text = "# Notes\n## Setup\n## Setup\n```bash\n# not a heading\n```\n"
    assert anchors(text) == {"notes", "setup", "setup-1"}


def test_checker_finds_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[fine](other.md) [fine too](other.md#a-section) [self](#page) [web](https://example.com/x.md)\n"
        "[gone](missing.md) [no such heading](other.md#b-section) [bad self](#nowhere)\n"
        "`[in code](missing.md)`\n"
        "```\n[in a block](missing.md)\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert any("missing.md: no such file" in p for p in problems)
    assert any("other.md#b-section: no heading" in p for p in problems)
    assert any("#nowhere: no heading" in p for p in problems)


def test_checker_passes_a_clean_page(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.md").write_text("## µP doctor\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text("[deep](sub/deep.md#µp-doctor) [folder](sub/)\n", encoding="utf-8")
    assert broken_links(page) == []


def test_quickstart_counter_sees_two_commands_and_no_more():
    fake = "```bash\npip install -e . && python a.py   # set up\n\n# a comment\npython -m pytest\n```\n"
    assert _fenced_commands(fake) == ["pip install -e . && python a.py   # set up", "python -m pytest"]
    assert len(_fenced_commands(fake + "```\nextra\n```\n")) == 3


# --- the real pages --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(path):
    assert broken_links(path) == []


def test_docs_exist_behind_the_front_page():
    for name in ("running.md", "parametrizations.md", "mutransfer.md", "optimizers.md", "results/README.md"):
        assert (ROOT / "docs" / name).is_file(), name


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move detail into docs/"


def test_quickstart_holds_exactly_two_commands():
    commands = _fenced_commands(_section(README.read_text(encoding="utf-8"), "Quickstart"))
    assert len(commands) == 2, commands
    setup_and_train, setup_and_test = commands
    assert setup_and_train.startswith("pip install -e . && python src/train.py")
    assert setup_and_test.startswith('pip install -e ".[dev]" && python -m pytest')


def test_readme_test_command_is_the_one_ci_runs():
    tests = _section(README.read_text(encoding="utf-8"), "Tests")
    assert "python -m pytest " in tests or "python -m pytest\n" in tests
    assert 'python -m pytest -m "not slow"' in tests


# ---- names the pages mention: a module path or a file that moves must not leave the docs behind

_DOTTED = re.compile(r"\bmugpt(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
_REPO_PATH = re.compile(r"`((?:src|conf|scripts|results|tests|docs)/[^`\s:]+)`")


def unresolved_names(text: str) -> list[str]:
    """The dotted `mugpt.…` names in a page that neither import nor are an attribute of an importable module."""
    import importlib

    missing = []
    for name in sorted(set(_DOTTED.findall(text))):
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(name)
            break
        else:
            missing.append(name)
    return missing


def missing_paths(text: str) -> list[str]:
    """The repository paths a page names in backticks that do not exist (placeholders like NAME and {a,b} globs
    are expanded or skipped)."""
    missing = []
    for path in sorted(set(_REPO_PATH.findall(text))):
        if any(ch in path for ch in "*<>") or path.split("/")[-1].isupper() or "NAME" in path:
            continue
        if "{" in path:  # a brace group: every alternative must exist
            head, rest = path.split("{", 1)
            options, tail = rest.split("}", 1)
            candidates = [head + option + tail for option in options.split(",")]
        else:
            candidates = [path]
        missing += [c for c in candidates if not (ROOT / c.rstrip("/")).exists()]
    return missing


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_name_and_path_a_page_mentions_exists(page):
    text = page.read_text()
    assert unresolved_names(text) == []
    assert missing_paths(text) == []


def test_the_name_and_path_checks_find_what_moved():
    text = "see `mugpt.core.recipe.train_step`, `mugpt.core.nowhere`, `mugpt.config.NoSuchThing` and `src/gone.py`"
    assert unresolved_names(text) == ["mugpt.config.NoSuchThing", "mugpt.core.nowhere"]
    assert missing_paths(text) == ["src/gone.py"]
    assert missing_paths("`conf/optim/NAME.yaml` and `results/{fair_rivals,nowhere}/`") == ["results/nowhere/"]
