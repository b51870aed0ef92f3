"""The test suite, a package tree so that every module has one name (``tests.export.conftest``,
not five ``conftest``) for pytest and mypy alike. Import shared helpers by that name:
``from tests.harness import ...``, ``from tests.export.export_scenario import Scenario``."""
