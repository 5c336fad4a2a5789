"""hillclimb's own environments, found by name like any installed one (`envs.authoring.registry`)."""
