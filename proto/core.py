"""The neutral proxy-core API messages (generated code lives in gen/)."""

from .gen.edgeward.core import *  # noqa: F403
from .gen.edgeward.core import __all__  # noqa: F401
