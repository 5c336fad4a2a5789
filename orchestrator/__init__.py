"""The driver side: pools, episodes, Ray workers, the trajectory buffer and ledger, the CLI."""
