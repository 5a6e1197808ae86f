"""Stored chat completions (`store: true`): the storage interface, its SQLite backend, and the
OpenAI-shaped objects the `/v1/chat/completions` list/retrieve/update/delete endpoints return."""
