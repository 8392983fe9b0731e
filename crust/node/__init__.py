"""The ready node: twistd plugin, data directory, config file, control socket, the crust command."""
