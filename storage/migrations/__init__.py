"""Alembic migrations for slimscout's tables; ``storage.init_db`` runs them to head.

There is no alembic.ini: the config is built in code by ``storage.db.alembic_config``. To add a
migration after changing ``storage/models.py``, autogenerate it against a database at head::

    from alembic import command
    from storage.db import alembic_config
    command.revision(alembic_config(url), message="add heartbeat", autogenerate=True, rev_id="0002")

Autogenerate only looks at ``slimscout_*`` tables, never at Optuna's.
"""
