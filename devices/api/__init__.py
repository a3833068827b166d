"""The device-facing API (balena-compatible): views, URLs, request parsing, the edge dispatch."""
