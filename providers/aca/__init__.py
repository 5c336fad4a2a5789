"""Azure Container Apps dynamic sessions as sandboxes: a provider plugin (`pip install "hillclimb[aca]"`)."""
