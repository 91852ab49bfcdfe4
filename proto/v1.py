"""edgeward.v1 messages and grpclib stubs (generated code lives in gen/)."""

from .gen.edgeward.v1 import *  # noqa: F403
from .gen.edgeward.v1 import __all__  # noqa: F401
