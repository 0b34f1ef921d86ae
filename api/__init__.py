"""slimscout's HTTP API and live dashboard (FastAPI); never imports torch. The app: ``api.main``."""
