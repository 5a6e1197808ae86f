"""The aiohttp client boundary: sessions, timeouts, exception mapping."""
