"""What `pip install .` (and so every image) ships: each package of services/ is listed."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_under_services_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(("snapkv", *init.parent.relative_to(ROOT / "services").parts))
        for init in (ROOT / "services").rglob("__init__.py")
    }
    assert found - listed == set(), "packages missing from [tool.setuptools] packages: the images would lack them"
