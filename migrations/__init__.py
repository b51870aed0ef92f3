"""The state database's Alembic migrations, installed as ``crm_export.migrations``.

Kept at the top of the repository, where a maintainer looks for them; the wheel carries them
inside crm_export (pyproject's package-dir). Driven by ``crm_export.migrate``: see env.py.
"""
