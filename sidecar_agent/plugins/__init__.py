"""Plugins from amesh-controller: the stream client, the merge into the translated document, and the
overlay that applies it to every document the pipeline gates and pushes."""
