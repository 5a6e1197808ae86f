"""Which upstream serves a request: targets, the planner, the executor."""
