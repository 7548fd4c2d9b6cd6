"""Shared by the benchmark scripts: replace one script's section of benchmarks/RESULTS.md."""

from __future__ import annotations

import re
from pathlib import Path


def write_section(path: Path, header: str, section: str) -> None:
    """Replace the section starting at ``header`` (up to the next ``## ``) with ``section``,
    or append it; other scripts' sections are left as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    pattern = re.compile(rf"^{re.escape(header)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text.rstrip("\n") + "\n")
