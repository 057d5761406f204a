"""The docs hold together: links resolve, ``--help`` names pages that exist, the README stays short.

The README is the front page and the pages under ``docs/`` hold the rest (issue 11). Pages are
moved and renamed; these checks catch a link, an ``#anchor``, a path in a ``--help`` text or
an import in an example left pointing at something that is gone (``detstack train --help`` once
named ``docs/readme/training.md``, which never existed). No server, no network: files, the
argument parser and imports only.

Run: ``.venv/bin/pytest tests/unit/test_docs_links.py -q``
"""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cli.main import build_parser
from pipeline import load_pipeline_config

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

#: Markdown files whose links must resolve: the README, every docs page, and the READMEs that
#: the docs link to and that link back.
MARKDOWN_FILES = sorted(
    [
        README,
        *(ROOT / "docs").glob("*.md"),
        ROOT / "model_repository" / "README.md",
        ROOT / "benchmarks" / "results" / "README.md",
        ROOT / "deploy" / "README.md",
    ]
)

#: The two set-up commands of a fresh machine, exactly as a user copies them.
SETUP_COMMANDS = (
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/detstack pipeline",
    "bash .ci/run",
)
README_MAX_LINES = 220

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"`[^`]*`")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")
_FROM_IMPORT = re.compile(r"^from ([\w.]+) import ([\w, ]+)$")
_MD_PATH = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w.-]*\w\.md)\b")


def _prose_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of the lines outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def _fenced_lines(path: Path) -> list[str]:
    """The stripped lines inside fenced code blocks."""
    fenced = False
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif fenced:
            lines.append(line.strip())
    return lines


def _code_blocks(path: Path, language: str) -> list[str]:
    """The text of each fenced block of ``language`` (```python, ```yaml, ...)."""
    pattern = rf"^```{language}\n(.*?)^```"
    return re.findall(pattern, path.read_text(encoding="utf-8"), flags=re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """Every anchor the headings of a markdown file define (repeats get -1, -2, ...)."""
    seen: dict[str, int] = {}
    anchors = set()
    for _, line in _prose_lines(path):
        match = _HEADING.match(line)
        if match is None:
            continue
        slug = _slug(match.group(2))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _relative_links(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, target) of each relative link outside code blocks and code spans."""
    for number, line in _prose_lines(path):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            target = match.group(1)
            if not _SCHEME.match(target):
                yield number, target


def _broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """One line per link of ``path`` whose file, or ``#anchor`` in a markdown file, is missing."""
    broken = []
    for number, target in _relative_links(path):
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{number}: {target}"
        if not resolved.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(f"{where} (no heading with anchor #{anchor})")
    return broken


def _help_texts(parser: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, str]]:
    """(command, text) of every description, epilog, usage and option help, all subparsers."""
    for text in (parser.description, parser.epilog, parser.usage):
        if text:
            yield name, text
    for action in parser._actions:
        if action.help and action.help is not argparse.SUPPRESS:
            yield name, action.help
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.help:
                    yield f"{name} {choice.dest}", choice.help
            for sub_name, subparser in action.choices.items():
                yield from _help_texts(subparser, f"{name} {sub_name}")


def _leaf_commands(parser: argparse.ArgumentParser, prefix: str = "detstack") -> list[str]:
    """Every runnable command path, e.g. ``detstack data synth``, ``detstack train``."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        return [prefix]
    return [
        command
        for group in groups
        for sub_name, subparser in group.choices.items()
        for command in _leaf_commands(subparser, f"{prefix} {sub_name}")
    ]


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    return build_parser()


@pytest.mark.parametrize("path", MARKDOWN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_in_the_docs_resolves(path: Path) -> None:
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    assert _broken_links(path) == []


def test_the_readme_links_to_every_docs_page() -> None:
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for _, target in _relative_links(README)
    }
    unlinked = [
        str(page.relative_to(ROOT))
        for page in sorted((ROOT / "docs").glob("*.md"))
        if page.resolve() not in linked
    ]
    assert unlinked == []


def test_the_link_checker_reports_a_missing_page_and_a_missing_anchor(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n## Its `first` section: (done)\n\n"
        "[ok](#its-first-section-done) [ok](page.md#a-page) [web](https://example.org/x.md)\n"
        "`[in code](gone.md)`\n```\n[in a block](gone.md)\n```\n"
        "[gone](gone.md) [no anchor](#nowhere)\n",
        encoding="utf-8",
    )
    assert _broken_links(page, root=tmp_path) == [
        "page.md:10: gone.md (no such file)",
        "page.md:10: #nowhere (no heading with anchor #nowhere)",
    ]


def test_every_docs_path_named_in_a_help_text_exists(parser: argparse.ArgumentParser) -> None:
    named = [
        (command, path)
        for command, text in _help_texts(parser, "detstack")
        for path in _MD_PATH.findall(text)
    ]
    assert named, "no --help text names a docs page; the search pattern is broken"
    missing = [f"{command}: {path}" for command, path in named if not (ROOT / path).is_file()]
    assert missing == []


def test_the_readme_is_at_most_220_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


@pytest.mark.parametrize("command", SETUP_COMMANDS)
def test_the_readme_gives_each_setup_command_in_a_code_block(command: str) -> None:
    assert command in _fenced_lines(README)


def test_the_readme_command_table_has_every_command_with_a_docs_link(
    parser: argparse.ArgumentParser,
) -> None:
    rows = [line for _, line in _prose_lines(README) if line.startswith("| `detstack ")]
    commands = _leaf_commands(parser)
    assert "detstack train" in commands and "detstack data synth" in commands
    missing = [
        command
        for command in commands
        if not any(
            re.match(rf"\| `{re.escape(command)}[ `]", row) and "](docs/" in row for row in rows
        )
    ]
    assert missing == []


def test_no_docs_page_copies_the_model_repository_readme() -> None:
    source = (ROOT / "model_repository" / "README.md").read_text(encoding="utf-8")
    long_lines = {line.strip() for line in source.splitlines() if len(line.strip()) >= 80}
    copied = [
        f"{page.relative_to(ROOT)}: {line[:60]}..."
        for page in [README, *sorted((ROOT / "docs").glob("*.md"))]
        for line in page.read_text(encoding="utf-8").splitlines()
        if line.strip() in long_lines
    ]
    assert copied == []


def test_every_name_the_docs_import_in_python_examples_exists() -> None:
    imports = [
        (page.relative_to(ROOT), module, name.strip())
        for page in [README, *sorted((ROOT / "docs").glob("*.md"))]
        for block in _code_blocks(page, "python")
        for line in block.splitlines()
        if (match := _FROM_IMPORT.match(line.strip()))
        for module, names in [match.groups()]
        for name in names.split(",")
    ]
    assert imports, "no python example imports anything; the search pattern is broken"
    missing = [
        f"{page}: from {module} import {name}"
        for page, module, name in imports
        if not hasattr(importlib.import_module(module), name)
    ]
    assert missing == []


def test_the_pipeline_page_example_configuration_loads(tmp_path: Path) -> None:
    (example,) = _code_blocks(ROOT / "docs" / "pipeline.md", "yaml")
    path = tmp_path / "pipeline.yaml"
    path.write_text(example, encoding="utf-8")
    config = load_pipeline_config(str(path), {})
    assert config.name == yaml.safe_load(example)["name"]
