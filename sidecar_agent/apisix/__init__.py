"""APISIX beside the agent: its conf/config.yaml (config.py, pure) and its process (supervisor.py)."""
