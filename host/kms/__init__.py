"""mozi.host.kms: key delivery to applications (ETSI GS QKD 014) over mutual TLS."""
