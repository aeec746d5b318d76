"""Feature extraction (log-mel in torch, eGeMAPS via opensmile) into a content-addressed store."""
