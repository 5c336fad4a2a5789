"""The authoring API: what an environment implements (`base`), its tasks (`tasks`, `file_suite`),
and how a name finds both (`packages`, `registry`). `scaffold` holds `hillclimb env init`'s templates."""
