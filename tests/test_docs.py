"""README.md is a short front door and docs/*.md hold the reference (issue 22 item 6): the README's
length, its set-up commands against CI's, the links of every page, the licence, and no working
jargon in the pages."""
import glob
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
PAGES = [README, *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def prose(text):
    """The lines of a Markdown page outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def slug(heading):
    """GitHub's anchor for a heading: lower case, formatting and punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link's text only
    text = re.sub(r"[`*]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path):
    seen, out = {}, set()
    for line in prose(read(path)):
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    out.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", read(path)))
    return out


def links(path):
    for number, line in enumerate(prose(read(path)), 1):
        for target in LINK.findall(re.sub(r"`[^`]*`", "", line)):
            yield number, target


def test_readme_is_at_most_150_lines():
    n = len(read(README).splitlines())
    assert n <= 150, f"README.md has {n} lines; move reference content to docs/"


@pytest.mark.parametrize("page", PAGES, ids=[os.path.relpath(p, ROOT) for p in PAGES])
def test_docs_relative_links_point_to_existing_files_and_anchors(page):
    broken = []
    for number, target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):   # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(dest):
            broken.append(f"{target}: no file {os.path.relpath(dest, ROOT)}")
        elif anchor and dest.endswith(".md") and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {os.path.relpath(dest, ROOT)}")
    assert not broken, f"{os.path.relpath(page, ROOT)}: " + "; ".join(broken)


def ci_commands():
    """The commands .ci/run runs, without the shell's own settings."""
    commands = []
    for line in read(os.path.join(ROOT, ".ci", "run")).splitlines():
        line = line.strip()
        if not line or line.startswith("#") or line.startswith(("set ", "cd ")):
            continue
        commands.append(line)
    return commands


def readme_setup_commands():
    """The commands of the first code block of README's set-up section, without their comments."""
    text = read(README)
    section = text[text.index("## Set-up"):]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]


def test_readme_setup_commands_are_the_ones_ci_runs():
    ci = ci_commands()
    assert ci == ["bash scripts/setup.sh", "python -m pytest -q"], ci
    build, tests = readme_setup_commands()
    assert tests == shlex.split(" && ".join(ci)), f"README's test command is not .ci/run's: {tests}"
    assert build[:3] == shlex.split("bash scripts/setup.sh &&")
    assert build[3:] == shlex.split("luigi --module pipeline BuildShards --dataset demo --local-scheduler")


def test_readme_shows_the_demo_output_paths():
    text = read(README)
    assert "store/demo/shards/6fe1743fb32f0486/shard-0000.h5" in text
    assert "store/demo/builds/b743457c4af6e6cf.json" in text


def test_license_exists_and_is_mit():
    path = os.path.join(ROOT, "LICENSE")
    assert os.path.isfile(path)
    text = read(path)
    assert "MIT License" in text and "Copyright (c) 2026 av-emotion-store contributors" in text


def test_docs_shard_format_keeps_the_generated_table_markers():
    text = read(os.path.join(ROOT, "docs", "shard-format.md"))
    begin, end = "<!-- BEGIN generated feature table -->", "<!-- END generated feature table -->"
    assert text.count(begin) == 1 and text.count(end) == 1
    assert text.index(begin) < text.index(end)


@pytest.mark.parametrize("page", PAGES, ids=[os.path.relpath(p, ROOT) for p in PAGES])
def test_docs_hold_no_working_jargon(page):
    text = read(page)
    found = [m.group(0) for pattern in (r"\bstop 1\d*\b", r"\bslower hours\b", r"\bsession ")
             for m in re.finditer(pattern, text, re.I)]
    assert not found, f"{os.path.relpath(page, ROOT)}: {found}"
