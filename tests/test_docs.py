"""The repository's documents point only inside the repository: every link and path they name exists."""
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Documents that are not shipped with the repository; spelt in two pieces so this file does not name them.
UNSHIPPED = ("SPEC" + ".md", "STYLE" + ".md", "../" + "shared")


def repository_files() -> list[str]:
    """Tracked files plus new ones not ignored, as git lists them (so runs/ and data/ are left out)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return sorted(path for path in set(listed) if os.path.isfile(os.path.join(ROOT, path)))


def read(path: str) -> str | None:
    try:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        return None  # binary (the tokenizer's ranks are text, but a PNG is not)


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#+ +(.+?) *$", re.sub(r"```.*?```", "", markdown, flags=re.S), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_no_file_names_an_unshipped_document():
    offenders = [(path, name) for path in repository_files() for name in UNSHIPPED
                 if name in (read(path) or "")]
    assert not offenders, offenders


def test_markdown_links_and_named_paths_exist():
    """Relative links ([text](path#anchor)) in every markdown file; every repository path a markdown file
    names (`experiments/bench_gpu.sh`); every document any file names (`docs/model.md`, `BENCHMARKS.md`)."""
    files = repository_files()
    missing = []
    for path in files:
        text = read(path)
        if text is None or not path.endswith((".md", ".py", ".ipynb", ".cfg", ".sh")):
            continue
        here = os.path.dirname(path)
        if path.endswith(".md"):
            for target in re.findall(r"\]\(([^)\s]+)\)", text):
                if re.match(r"[a-z]+:", target):
                    continue  # a URL
                file, _, anchor = target.partition("#")
                resolved = os.path.normpath(os.path.join(here, file)) if file else path
                if not os.path.exists(os.path.join(ROOT, resolved)):
                    missing.append(f"{path}: link {target}")
                elif anchor and resolved.endswith(".md") and anchor not in anchors(read(resolved)):
                    missing.append(f"{path}: anchor {target}")
        # In code only documents count: a test or an example may name a config that is meant not to exist.
        folders = "aed_jax|configs|docs|experiments|tests|\\.ci" if path.endswith(".md") else "docs"
        for named in re.findall(rf"[`\"'(\s]((?:{folders})/[\w./-]*\w|[A-Z]\w*\.md)\b", text):
            if not os.path.exists(os.path.join(ROOT, named)):
                missing.append(f"{path}: {named}")
    assert not missing, missing
