"""The teacher: loading, block discovery, the demo network."""
