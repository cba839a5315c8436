"""Test support that ships with the agent: an istiod-like xDS generator (``istiogen``)."""
