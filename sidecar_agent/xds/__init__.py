"""xDS protocol pieces of the sidecar agent (type URLs here; the ADS client comes later)."""
