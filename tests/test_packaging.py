"""What the wheel carries: pyproject.toml lists every package, and jobs/ and migrations/ travel
inside crm_export (through symlinks), so an installed copy has its migrations, its jobs and
one import name.

CI builds the wheel and runs it from outside the checkout (.ci/run); these checks catch the
usual way that breaks, a new package nobody added to the list, before a wheel is built.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setuptools() -> dict[str, object]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    section: dict[str, object] = pyproject["tool"]["setuptools"]
    return section


def _listed_packages() -> set[str]:
    """[tool.setuptools] packages: what the wheel carries."""
    packages = _setuptools()["packages"]
    assert isinstance(packages, list), packages
    return set(packages)


def _package_dirs() -> dict[str, Path]:
    """Every package under crm_export/ (symlinked ones included), by its installed name."""
    found: dict[str, Path] = {}
    for directory, _, files in os.walk(ROOT / "crm_export", followlinks=True):
        if "__init__.py" in files:
            path = Path(directory)
            found[".".join(path.relative_to(ROOT).parts)] = path
    return found


def test_every_package_in_the_repository_is_in_the_wheel() -> None:
    listed = _listed_packages()
    missing = sorted(set(_package_dirs()) - listed)
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_jobs_and_migrations_install_inside_crm_export() -> None:
    for name in ("jobs", "migrations"):
        link = ROOT / "crm_export" / name
        assert link.is_symlink() and link.resolve() == ROOT / name, link
    listed = _listed_packages()
    assert {"crm_export.jobs", "crm_export.migrations", "crm_export.migrations.versions"} <= listed
    assert all(name.split(".")[0] == "crm_export" for name in listed)


def test_the_packaged_example_config_is_the_documented_one() -> None:
    from crm_export.cli import example_config

    assert example_config() == (ROOT / "config.example.toml").read_text(encoding="utf-8")
