"""Runner, trainer and results store (tables, statistics and tuning build on these)."""
