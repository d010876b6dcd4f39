"""splitfed's roles as network services: the main server, the fed server and the clients (gRPC, TLS).

One more executor of the algorithms' definitions: each role runs its party's part of whatever algorithm
the config names (through the registry), with the simulation's own sides, sampler and slot plan. The
commands that start a role (``splitfed main-server`` ...) live in ``splitfed.roles``; ``launch`` starts a
whole deployment on loopback.
"""

from ..errors import SplitfedError


def check_generated() -> None:
    """The gRPC code is generated at install time (setup.py); say how to get it if it is missing."""
    try:
        from . import splitfed_pb2, splitfed_pb2_grpc  # noqa: F401
    except ImportError as e:
        raise SplitfedError(
            "the gRPC code is generated at install time and is missing: reinstall splitfed "
            f"(pip install -c constraints.txt -e .) ({e})"
        ) from None
