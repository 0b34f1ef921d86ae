"""The only place configuration is read: environment variables prefixed ``SLIMSCOUT_``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

# Dtypes a model may be loaded in (compress.device maps them to torch dtypes).
ModelDtype = Literal["float32", "bfloat16"]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLIMSCOUT_", env_file=".env", extra="ignore")

    cache_dir: Path = Field(default_factory=lambda: Path.home() / ".cache" / "slimscout")
    storage_url: str = "sqlite:///slimscout.db"
    # Directories the service may load local models from (the CLI may load any local path).
    model_roots: list[Path] = Field(default_factory=list)
    # Directories the service may read evaluation text files (.txt, .jsonl) from.
    data_roots: list[Path] = Field(default_factory=list)
    trust_remote_code: bool = False
    hub_timeout_s: float = 3.0
    # Bearer token(s) the API requires; a comma-separated list gives each user their own token.
    api_token: str | None = None
    max_trials: int = 1000
    max_eval_tokens: int = 65536
    max_request_bytes: int = 1_000_000
    # Queued + running studies one token (or everyone, with auth off) may have at once; more is a 429.
    max_open_studies: int = 20
    # `slimscout serve`: seconds a client has to send a whole request (headers and body) once it has
    # begun one, and how long an idle keep-alive connection stays open.
    request_read_timeout_s: float = 30.0
    keep_alive_timeout_s: int = 5
    heartbeat_interval_s: int = 10
    # Where a worker (the service's, or `search --workers N`) loads models, and in which dtype.
    device: str = "cpu"
    dtype: ModelDtype = "float32"
    # Recoveries in a worker (a study's recover_steps, the kl-recovered objective) train under bfloat16
    # autocast: faster only where bf16 matmuls are (2x on one AVX-512-BF16 CPU, 1.5x slower on another).
    recover_bf16: bool = False
    # A model whose linear weights take more bytes than this keeps its dense-weight copies and
    # calibration Grams on disk, read one layer at a time, instead of in memory.
    in_memory_caches_max_bytes: int = 1 << 30


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
