"""Server-Sent Events read from a byte stream, as the HTML standard parses them:
`event:` and `data:` fields, a blank line ending each event, `:` comments."""
from typing import BinaryIO, Iterator, Tuple


def events(stream: BinaryIO) -> Iterator[Tuple[str, str]]:
    """Yields (event name, data) for each event of `stream`."""
    name, data = "message", []
    for raw in stream:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
            continue
        if line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if key == "event":
            name = value
        elif key == "data":
            data.append(value)
