"""The README's Python blocks run as printed (from a clone, with nothing downloaded)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, capsys):
    exec(compile(BLOCKS[index], f"README.md python block {index + 1}", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out.split()
    assert len(printed) == 2 and all(0.0 <= float(v) <= 1.0 for v in printed)


def test_readme_links_resolve():
    missing = [link for link in re.findall(r"\]\(([^)#:]+)\)", README.read_text())
               if not (README.parent / link).exists()]
    assert not missing
