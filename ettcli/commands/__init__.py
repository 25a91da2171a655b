"""CLI command modules. Each exposes ``register(app)``; none imports torch at module level."""
