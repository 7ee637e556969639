"""Every ```python block of README.md runs."""

import re
from pathlib import Path

import pytest
from helpers import marks_for

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize(
    "code",
    [pytest.param(b, marks=marks_for(b), id=f"block{i}") for i, b in enumerate(BLOCKS)],
)
def test_readme_snippet_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
