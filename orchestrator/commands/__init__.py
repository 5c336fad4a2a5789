"""One module per `hillclimb` command group."""
