"""Every benchmark result file that the README, the docs pages or benchmarks/README.md name exists, is
committed beside the figures it backs, and parses; every JSON result names the script and the command that
wrote it (`provenance`, from `benchmarks/_measure.py`)."""

from __future__ import annotations

import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
PAGES = [
    "README.md",
    "benchmarks/README.md",
    *sorted(os.path.join("docs", p) for p in os.listdir(os.path.join(ROOT, "docs")) if p.endswith(".md")),
]
# benchmarks/results/NAME.json, NAME.md or NAME.{json,md}
NAMED = re.compile(r"benchmarks/results/([\w.\-]+?)\.(\{json,md\}|json|md)(?!\w)")


def named_result_files(text: str) -> list[str]:
    """Paths (relative to the repository) of the result files a page names."""
    out = []
    for stem, ext in NAMED.findall(text):
        exts = ("json", "md") if ext == "{json,md}" else (ext,)
        out += [f"benchmarks/results/{stem}.{e}" for e in exts]
    return out


def test_named_result_files_parser():
    text = "see `benchmarks/results/a.json`, benchmarks/results/b_c.{json,md} and benchmarks/results/d.md."
    assert named_result_files(text) == [
        "benchmarks/results/a.json",
        "benchmarks/results/b_c.json",
        "benchmarks/results/b_c.md",
        "benchmarks/results/d.md",
    ]


def check_result_file(path: str) -> None:
    full = os.path.join(ROOT, path)
    assert os.path.isfile(full), (
        f"{path} is named in the docs but not committed: run the script that writes it"
    )
    if path.endswith(".md"):
        assert open(full, encoding="utf-8").read().strip(), f"{path} is empty"
        return
    data = json.load(open(full, encoding="utf-8"))
    prov = data.get("provenance") if isinstance(data, dict) else None
    assert prov and prov.get("command"), f"{path}: no provenance.command (rerun its script)"
    assert os.path.isfile(os.path.join(ROOT, prov["script"])), f"{path}: its script {prov['script']} is gone"
    assert prov["script"] in prov["command"]


@pytest.mark.parametrize("page", PAGES)
def test_every_named_result_file_exists_and_parses(page):
    for path in named_result_files(open(os.path.join(ROOT, page), encoding="utf-8").read()):
        check_result_file(path)


def test_every_committed_result_names_its_script_and_command():
    if not os.path.isdir(RESULTS):
        pytest.skip("no benchmarks/results/ yet")
    for name in sorted(os.listdir(RESULTS)):
        if name.endswith(".json"):
            check_result_file(f"benchmarks/results/{name}")
