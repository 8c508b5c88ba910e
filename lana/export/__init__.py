"""Export formats of a student, each reloaded and verified in its runtime."""
