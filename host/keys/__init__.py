"""mozi.host.keys: the key store and the trusted relay."""
