"""Fast decoding of the core's QueryStatsResponse.

At 10,000 users a QueryStats reply holds ~20,000 counters (~950 KB); betterproto2
spends ~185 ms building a Stat object per counter, while the agent only needs
name -> value. This walks the two-level protobuf wire format directly:

    QueryStatsResponse { repeated Stat stat = 1; }   Stat { string name = 1; int64 value = 2; }

Unknown fields are skipped, as protobuf requires, so a newer core that adds fields
still decodes. The result equals betterproto2's (a test compares them).
"""

from __future__ import annotations


class StatsDecodeError(ValueError):
    """The reply is not a well-formed QueryStatsResponse."""


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            break
    raise StatsDecodeError("malformed varint in QueryStats reply")


def _skip(data: bytes, pos: int, end: int, wire_type: int) -> int:
    if wire_type == 0:
        return _varint(data, pos, end)[1]
    if wire_type == 1:
        pos += 8
    elif wire_type == 2:
        length, pos = _varint(data, pos, end)
        pos += length
    elif wire_type == 5:
        pos += 4
    else:
        raise StatsDecodeError(f"unsupported wire type {wire_type} in QueryStats reply")
    if pos > end:
        raise StatsDecodeError("truncated field in QueryStats reply")
    return pos


def _stat(data: bytes, pos: int, end: int) -> tuple[str, int]:
    name = ""
    value = 0
    while pos < end:
        key, pos = _varint(data, pos, end)
        field, wire_type = key >> 3, key & 7
        if field == 1 and wire_type == 2:
            length, pos = _varint(data, pos, end)
            if pos + length > end:
                raise StatsDecodeError("truncated counter name in QueryStats reply")
            try:
                name = data[pos : pos + length].decode()
            except UnicodeDecodeError as e:
                raise StatsDecodeError(f"counter name is not UTF-8: {e}") from None
            pos += length
        elif field == 2 and wire_type == 0:
            raw, pos = _varint(data, pos, end)
            raw &= (1 << 64) - 1
            value = raw - (1 << 64) if raw >= 1 << 63 else raw  # int64 two's complement
        else:
            pos = _skip(data, pos, end, wire_type)
    return name, value


def decode_query_stats(data: bytes) -> dict[str, int]:
    """name -> value of every counter in a serialized QueryStatsResponse."""
    counters: dict[str, int] = {}
    pos = 0
    end = len(data)
    while pos < end:
        key = data[pos]
        if key == 0x0A and pos + 1 < end and data[pos + 1] < 0x80:
            # The common shape, inlined: a Stat shorter than 128 bytes holding
            # name (<128 bytes) then value -- what every core sends for user counters.
            stop = pos + 2 + data[pos + 1]
            if stop > end:
                raise StatsDecodeError("truncated counter in QueryStats reply")
            if data[pos + 2] == 0x0A and data[pos + 3] < 0x80:
                name_end = pos + 4 + data[pos + 3]
                if name_end + 1 < stop and data[name_end] == 0x10:
                    if data[name_end + 1] < 0x80:  # one-byte value
                        value, value_end = data[name_end + 1], name_end + 2
                    else:
                        value, value_end = _varint(data, name_end + 1, stop)
                    if value_end == stop and value < 1 << 63:
                        try:
                            counters[data[pos + 4 : name_end].decode()] = value
                        except UnicodeDecodeError:
                            pass  # the general path below says what is wrong
                        else:
                            pos = stop
                            continue
            name, value = _stat(data, pos + 2, stop)
            counters[name] = value
            pos = stop
            continue
        key, pos = _varint(data, pos, end)
        field, wire_type = key >> 3, key & 7
        if field == 1 and wire_type == 2:
            length, pos = _varint(data, pos, end)
            stop = pos + length
            if stop > end:
                raise StatsDecodeError("truncated counter in QueryStats reply")
            name, value = _stat(data, pos, stop)
            counters[name] = value
            pos = stop
        else:
            pos = _skip(data, pos, end, wire_type)
    return counters
