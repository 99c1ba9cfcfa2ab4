"""Config schema and defaults (no JAX)."""
