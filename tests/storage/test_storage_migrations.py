from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from storage import VERSION_TABLE, Base, get_engine, init_db, normalize_url
from storage.db import alembic_config

OUR_TABLES = {"slimscout_studies", "slimscout_artifacts", "slimscout_study_groups", VERSION_TABLE}


def _head(url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    return head


def _versions(url: str, table: str = VERSION_TABLE) -> list[str]:
    with get_engine(url).connect() as connection:
        return list(connection.execute(text(f"SELECT version_num FROM {table}")).scalars())


def test_init_db_creates_our_tables_only(empty_url: str) -> None:
    init_db(empty_url)
    tables = set(inspect(get_engine(empty_url)).get_table_names())
    assert tables == OUR_TABLES  # in particular no "alembic_version": that one is Optuna's
    assert _versions(empty_url) == [_head(empty_url)]


def test_init_db_twice_is_a_no_op(empty_url: str) -> None:
    init_db(empty_url)
    init_db(empty_url)
    assert set(inspect(get_engine(empty_url)).get_table_names()) == OUR_TABLES
    assert _versions(empty_url) == [_head(empty_url)]


@pytest.mark.parametrize("processes", [2, 4])
def test_init_db_from_concurrent_processes(
    empty_url: str, run_children: Callable[..., list[str]], processes: int
) -> None:
    outputs = run_children("migrate", empty_url, processes)
    assert [json.loads(out) for out in outputs] == [[]] * processes
    assert set(inspect(get_engine(empty_url)).get_table_names()) == OUR_TABLES
    assert _versions(empty_url) == [_head(empty_url)]


def test_existing_alembic_version_table_is_left_alone(empty_url: str) -> None:
    with get_engine(empty_url).begin() as connection:
        connection.execute(
            text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        )
        connection.execute(text("INSERT INTO alembic_version VALUES ('v3.2.0.a')"))
    init_db(empty_url)
    init_db(empty_url)
    assert _versions(empty_url, "alembic_version") == ["v3.2.0.a"]
    assert _versions(empty_url) == [_head(empty_url)]


@pytest.mark.parametrize("optuna_first", [True, False], ids=["optuna-first", "slimscout-first"])
def test_optuna_tables_coexist(empty_url: str, optuna_first: bool) -> None:
    optuna = pytest.importorskip("optuna")
    optuna_url = normalize_url(empty_url).render_as_string(hide_password=False)

    def optuna_storage() -> object:
        return optuna.storages.RDBStorage(optuna_url, skip_compatibility_check=False)

    if optuna_first:
        storage = optuna_storage()
        init_db(empty_url)
    else:
        init_db(empty_url)
        storage = optuna_storage()
    optuna_versions = _versions(empty_url, "alembic_version")
    init_db(empty_url)
    # Optuna still recognises its schema version, and ours is unaffected.
    study = optuna.create_study(storage=optuna_storage(), study_name="slimscout-abc")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    assert len(optuna.load_study(study_name="slimscout-abc", storage=storage).trials) == 2
    assert _versions(empty_url, "alembic_version") == optuna_versions
    assert _versions(empty_url) == [_head(empty_url)]
    tables = set(inspect(get_engine(empty_url)).get_table_names())
    assert tables >= OUR_TABLES and "studies" in tables and "trials" in tables


def test_models_match_migrations(empty_url: str) -> None:
    """The table classes and the migrations describe the same schema (no drift)."""
    init_db(empty_url)
    with get_engine(empty_url).connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "version_table": VERSION_TABLE,
                "include_name": lambda name, type_, _: type_ != "table" or name.startswith("slimscout_"),
            },
        )
        assert compare_metadata(context, Base.metadata) == []


def test_downgrade_to_base_and_upgrade_again(empty_url: str) -> None:
    init_db(empty_url)
    config = alembic_config(empty_url)  # no connection attribute: env.py opens its own
    command.downgrade(config, "base")
    assert set(inspect(get_engine(empty_url)).get_table_names()) == {VERSION_TABLE}
    assert _versions(empty_url) == []
    command.upgrade(config, "head")
    assert set(inspect(get_engine(empty_url)).get_table_names()) == OUR_TABLES
    assert _versions(empty_url) == [_head(empty_url)]


def test_0004_moves_the_spec_columns_into_one_document_and_back(empty_url: str) -> None:
    init_db(empty_url, revision="0003")
    with get_engine(empty_url).begin() as connection:
        connection.execute(text(
            "INSERT INTO slimscout_studies (id, optuna_study_name, model_id, dataset, split, budget, operators, "
            "granularity, n_trials, eval_tokens, objective, seed, warm_start, status, created_at, updated_at) "
            "VALUES ('abc', 'slimscout-abc', 'tiny-llama', 'lee-news', 'search', 0.5, '[\"wanda\", \"int8\"]', "
            "'type', 12, 64, 'ppl', 3, true, 'queued', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
    init_db(empty_url)
    with get_engine(empty_url).connect() as connection:
        stored = connection.execute(text("SELECT spec FROM slimscout_studies")).scalar_one()
    spec = stored if isinstance(stored, dict) else json.loads(stored)
    assert spec == {"model_id": "tiny-llama", "dataset": "lee-news", "split": "search", "budget": 0.5,
                    "operators": ["wanda", "int8"], "granularity": "type", "n_trials": 12, "eval_tokens": 64,
                    "objective": "ppl", "seed": 3, "warm_start": True}
    assert "model_id" not in {column["name"] for column in inspect(get_engine(empty_url)).get_columns(
        "slimscout_studies")}
    command.downgrade(alembic_config(empty_url), "0003")
    with get_engine(empty_url).connect() as connection:
        row = connection.execute(text("SELECT model_id, budget, n_trials, objective FROM slimscout_studies")).one()
    assert tuple(row) == ("tiny-llama", 0.5, 12, "ppl")
