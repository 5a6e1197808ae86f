"""The HTTP server: app assembly, handlers, error responses (request in, response out)."""
