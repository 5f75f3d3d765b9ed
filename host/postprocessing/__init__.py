"""mozi.host.postprocessing: the protocol after the detectors — timing recovery, sifting,
finite-key estimation, error correction, verification, privacy amplification, and the
session engine that runs them."""
