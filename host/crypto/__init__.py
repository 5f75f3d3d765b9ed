"""mozi.host.crypto: the authenticated channel, secret randomness, image encryption."""
