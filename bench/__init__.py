"""The streaming benchmark (`make bench`)."""
