"""The local mesh's expected failures: each message names the problem and what to do."""


class MeshError(RuntimeError):
    pass
