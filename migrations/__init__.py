"""The state database's Alembic migrations, installed as ``crm_export.migrations``.

Kept at the top of the repository, where a maintainer looks for them; the wheel carries them
inside crm_export (through a symlink). Driven by ``crm_export.store.migrations``: see env.py.
"""
