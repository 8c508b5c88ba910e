"""The run folder and what every stage needs."""
