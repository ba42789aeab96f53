"""The `port:` option of the kinds that look at a machine's host (tls, dns, grpc): a number, or a template such
as "{port}" that becomes the machine's own port once rendered for it."""

from __future__ import annotations


def port_option(value: object, example: str) -> int | str:
    """The option as validated with the config: a port number, or a template left for each machine."""
    if isinstance(value, str) and "{" in value:
        return value
    return port_number(value, example)


def port_number(value: object, example: str) -> int:
    """A port number from 1 to 65535 (digits in a string too); a ValueError naming the fix otherwise."""
    text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit() and 0 < int(text) < 65536):
        raise ValueError(
            f"expected a port between 1 and 65535, like {example}, or a template such as '{{port}}'; got {value!r}"
        )
    return int(text)
