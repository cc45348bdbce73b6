"""Plain-Python helpers the Prefect flows call (no Prefect imports here): dataset preview sheets and the
loopback static file server that lets the Prefect UI load image artifacts."""
