"""The README's and the docs pages' commands marked `<!-- runnable -->` (the HTML comment on the line
before a ```bash block) run as written, in order, in a fresh copy of the repository: a newcomer who
pastes them gets no 'command not found' and no error.

The README's blocks run exactly as written (it activates `.venv` itself); a docs page's blocks run
after `source .venv/bin/activate`, which the pages assume. `.venv` in the copy is the virtual
environment running the tests, and the copy's own packages come first on the import path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md", *sorted(os.path.join("docs", p) for p in os.listdir(os.path.join(ROOT, "docs")))]
MARKER = "<!-- runnable -->"


def runnable_blocks(text: str) -> list[str]:
    """The bodies of the ```bash blocks that directly follow a `<!-- runnable -->` line (blank lines between
    are allowed); a marker not followed by a bash block is an error, so a marker cannot silently run nothing."""
    lines = text.split("\n")
    blocks = []
    for i, line in enumerate(lines):
        if line.strip() != MARKER:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if j == len(lines) or lines[j].strip() != "```bash":
            raise ValueError(f"line {i + 1}: {MARKER} must be followed by a ```bash block")
        end = lines.index("```", j + 1)
        blocks.append("\n".join(lines[j + 1 : end]))
    return blocks


def test_runnable_blocks_parser():
    text = "x\n<!-- runnable -->\n\n```bash\na\nb\n```\n```bash\nnot marked\n```\n<!-- runnable -->\n```bash\nc\n```\n"
    assert runnable_blocks(text) == ["a\nb", "c"]
    with pytest.raises(ValueError, match="line 1"):
        runnable_blocks("<!-- runnable -->\n```python\nx\n```\n")


def test_readme_shows_activation_before_bare_commands():
    blocks = runnable_blocks(open(os.path.join(ROOT, "README.md"), encoding="utf-8").read())
    assert blocks and blocks[0].split("\n")[0] == "source .venv/bin/activate"


def fresh_copy(dest: str) -> str:
    """The repository's tracked and untracked-but-not-ignored files, as a fresh clone would have them (plus
    uncommitted edits), with `.venv` pointing at the running virtual environment."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (f.decode() for f in files)):
        src = os.path.join(ROOT, name)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dest, name)) or dest, exist_ok=True)
            shutil.copy2(src, os.path.join(dest, name))
    os.symlink(sys.prefix, os.path.join(dest, ".venv"))
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in PAGES if MARKER in open(os.path.join(ROOT, p)).read()])
def test_page_runnable_commands_run_in_order(page, tmp_path):
    if not os.path.exists(os.path.join(sys.prefix, "bin", "activate")):
        pytest.skip("the tests do not run in a virtual environment, so there is no .venv to activate")
    clone = fresh_copy(str(tmp_path / "clone"))
    blocks = runnable_blocks(open(os.path.join(ROOT, page), encoding="utf-8").read())
    script = "set -euo pipefail\n"
    if page != "README.md":
        script += "source .venv/bin/activate\n"
    script += "\n".join(blocks) + "\n"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update(PYTHONPATH=clone, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(sys.prefix)
    )
    proc = subprocess.run(
        ["bash", "-c", script], cwd=clone, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{page}: exit {proc.returncode}\n{proc.stderr[-3000:]}"
    if page == "README.md":  # the tour's fit really happened
        fit = json.load(open(os.path.join(clone, "runs", "tour", "fit.json")))
        assert fit["law"] == "chinchilla"
