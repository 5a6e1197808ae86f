"""streamproxy: a fast, correct OpenAI-compatible streaming gateway."""

__version__ = "0.1.0"
