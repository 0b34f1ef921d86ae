"""A child process for the storage tests: ``python _storage_child.py {migrate|claim} URL SYNC_DIR``.

It gets ready (imports, connects), writes ``SYNC_DIR/ready-<pid>``, waits for ``SYNC_DIR/go``
and then races its siblings: ``migrate`` runs ``init_db``; ``claim`` claims queued studies
until none is left and prints the claimed ids as a JSON list.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from sqlalchemy import text

from storage import claim_queued_study, get_engine, init_db, session_scope


def main() -> None:
    action, url, sync_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    engine = get_engine(url)
    if action == "claim":
        with engine.connect() as connection:  # warm the pool before the start
            connection.execute(text("SELECT 1"))
    (sync_dir / f"ready-{os.getpid()}").touch()
    while not (sync_dir / "go").exists():
        time.sleep(0.001)
    if action == "migrate":
        init_db(url)
        print(json.dumps([]))
    elif action == "claim":
        claimed: list[str] = []
        while True:
            with session_scope(engine) as session:
                study = claim_queued_study(session)
                if study is None:
                    break
                claimed.append(study.id)
        print(json.dumps(claimed))
    else:
        raise SystemExit(f"unknown action {action!r}")


if __name__ == "__main__":
    main()
