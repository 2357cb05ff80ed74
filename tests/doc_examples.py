"""Run the code of a docs/ page: its first ```python block becomes an importable module, so a page's
worked example is tested as written."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)


def load_example(page: str, module_name: str) -> types.ModuleType:
    """Execute the page's first python block as module `module_name` (registered in sys.modules, so
    dataclass annotations resolve); the caller removes it and whatever it registered."""
    module = types.ModuleType(module_name)
    sys.modules[module_name] = module
    exec(compile(python_blocks(page)[0], f"docs/{page}", "exec"), module.__dict__)
    return module
