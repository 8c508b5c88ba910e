"""The ``lana`` command line (thin: parse, call the API or a stage, print)."""
