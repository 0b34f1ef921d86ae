"""``slimscout apply``: write a compressed checkpoint (Hugging Face layout) from a config document."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from slimscout.commands._common import note, print_result


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("apply", help="write the compressed model a config describes to a directory")
    parser.add_argument("--model", required=True, help="catalog id, local directory, or hub id")
    parser.add_argument("--config", required=True, help="config document (slimscout.config/v1 JSON)")
    parser.add_argument("--out", required=True, help="directory to write (must not exist unless --force)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it is an earlier export")
    parser.add_argument("--merge", action="store_true",
                        help="store plain dense weights (loadable by transformers without slimscout) "
                             "instead of low-rank factors")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    result = apply(model_id=args.model, config_path=args.config, out=args.out, force=args.force,
                   merge=args.merge)
    print_result(result, as_json=args.json, width=20)
    return 0


def apply(*, model_id: str, config_path: str, out: str, force: bool, merge: bool) -> dict[str, Any]:
    from compress.config import load_config
    from compress.export import check_target, export_compressed
    from compress.session import ModelSession

    started = time.perf_counter()
    config = load_config(config_path)  # validate before the slow load
    check_target(Path(out).expanduser().absolute(), force=force)
    note(f"loading {model_id} …")
    session = ModelSession.open(model_id)
    session.check_model(config)
    note(f"writing {out} …")
    result = export_compressed(session, config, out, force=force, merge=merge).to_dict()
    return {**result, "export_s": result["seconds"], "seconds": time.perf_counter() - started}
