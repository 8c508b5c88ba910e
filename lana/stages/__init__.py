"""The run-folder commands; nothing in lana below imports them."""
