"""The strategies' code, one module each; ``search.strategy_registry`` names them and loads them lazily."""
