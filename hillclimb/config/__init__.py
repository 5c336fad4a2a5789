"""The run-config schema: pydantic models that validate a config without loading any runtime code."""
