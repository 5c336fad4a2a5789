"""Learners, losses, policies and models. Importing this package imports no torch."""
