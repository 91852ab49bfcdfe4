"""edgeward's wire schema: .proto sources and the generated betterproto2 code.

Import the generated messages through `edgeward.proto.v1` (agent <-> central and
admin) and `edgeward.proto.core` (the neutral proxy-core API subset).
"""
