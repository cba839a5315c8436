"""Plugins from amesh-controller: the stream client and the merge into the translated document."""
