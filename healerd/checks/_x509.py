"""What the `tls` check reads from a server's certificate (validity, names, issuer), straight from its DER bytes:
the standard library decodes a certificate only once it has been verified, and the check must also read the ones
it does not verify (`verify: false`, or to say why verification failed)."""

from __future__ import annotations

import calendar
import ipaddress
from dataclasses import dataclass

_SEQUENCE, _SET, _OID, _BOOLEAN = 0x30, 0x31, 0x06, 0x01
_UTC_TIME, _GENERALIZED_TIME = 0x17, 0x18
_EXPLICIT_VERSION, _EXTENSIONS = 0xA0, 0xA3
_DNS_NAME, _IP_ADDRESS = 0x82, 0x87
_COMMON_NAME = bytes.fromhex("550403")  # 2.5.4.3
_SUBJECT_ALT_NAME = bytes.fromhex("551d11")  # 2.5.29.17


class BadCertificate(ValueError):
    """The bytes are not a certificate this reader understands."""


@dataclass(frozen=True, slots=True)
class Certificate:
    not_before: float  # Unix time
    not_after: float
    subject: str  # the subject's common name ("" without one)
    issuer: str  # the issuer's common name
    names: tuple[str, ...]  # the subject alternative names: DNS names and IP addresses


def parse(der: bytes) -> Certificate:
    """The validity, common names and alternative names of a DER certificate."""
    try:
        return _parse(der)
    except (IndexError, ValueError) as exc:
        raise BadCertificate(f"unreadable certificate: {exc}") from None


def _parse(der: bytes) -> Certificate:
    _, start, _ = _expect(der, 0, _SEQUENCE)  # Certificate
    _, pos, tbs_end = _expect(der, start, _SEQUENCE)  # TBSCertificate
    if der[pos] == _EXPLICIT_VERSION:
        pos = _tlv(der, pos)[2]
    pos = _tlv(der, pos)[2]  # serial number
    pos = _tlv(der, pos)[2]  # signature algorithm
    _, issuer_start, pos = _expect(der, pos, _SEQUENCE)
    issuer = _common_name(der, issuer_start, pos)
    _, validity, pos = _expect(der, pos, _SEQUENCE)
    not_before, after_pos = _time(der, validity)
    not_after, _ = _time(der, after_pos)
    _, subject_start, pos = _expect(der, pos, _SEQUENCE)
    subject = _common_name(der, subject_start, pos)
    pos = _tlv(der, pos)[2]  # subject public key info
    names: tuple[str, ...] = ()
    while pos < tbs_end:
        tag, body, pos = _tlv(der, pos)
        if tag == _EXTENSIONS:
            names = _alt_names(der, *_expect(der, body, _SEQUENCE)[1:])
    return Certificate(not_before, not_after, subject, issuer, names)


def _tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the element at `pos`."""
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        length = int.from_bytes(der[pos : pos + size], "big")
        pos += size
    end = pos + length
    if end > len(der):
        raise ValueError("an element runs past the end")
    return tag, pos, end


def _expect(der: bytes, pos: int, tag: int) -> tuple[int, int, int]:
    found = _tlv(der, pos)
    if found[0] != tag:
        raise ValueError(f"expected tag {tag:#x} at byte {pos}, found {found[0]:#x}")
    return found


def _time(der: bytes, pos: int) -> tuple[float, int]:
    tag, start, end = _tlv(der, pos)
    text = der[start:end].decode("ascii").rstrip("Z")
    if tag == _UTC_TIME:  # YYMMDDHHMM[SS]: years 50-99 are 19xx (RFC 5280)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != _GENERALIZED_TIME:
        raise ValueError(f"expected a time at byte {pos}")
    fields = [int(text[i : i + 2]) for i in range(4, min(len(text), 14), 2)]
    fields += [0] * (5 - len(fields))
    return float(calendar.timegm((int(text[:4]), *fields[:5], 0, 0, 0))), end


def _common_name(der: bytes, pos: int, end: int) -> str:
    while pos < end:  # Name: SET of SEQUENCE {type, value}
        _, attribute, pos = _expect(der, pos, _SET)
        _, oid_at, _ = _expect(der, attribute, _SEQUENCE)
        _, oid_start, oid_end = _expect(der, oid_at, _OID)
        if der[oid_start:oid_end] == _COMMON_NAME:
            _, start, stop = _tlv(der, oid_end)
            return der[start:stop].decode("utf-8", "replace")
    return ""


def _alt_names(der: bytes, pos: int, end: int) -> tuple[str, ...]:
    while pos < end:  # Extension: SEQUENCE {extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING}
        _, field, pos = _expect(der, pos, _SEQUENCE)
        _, oid_start, field = _expect(der, field, _OID)
        if der[oid_start:field] != _SUBJECT_ALT_NAME:
            continue
        if der[field] == _BOOLEAN:
            field = _tlv(der, field)[2]
        _, value, _ = _tlv(der, field)
        _, at, stop = _expect(der, value, _SEQUENCE)
        names: list[str] = []
        while at < stop:
            tag, start, at = _tlv(der, at)
            if tag == _DNS_NAME:
                names.append(der[start:at].decode("ascii", "replace"))
            elif tag == _IP_ADDRESS and at - start in (4, 16):
                names.append(str(ipaddress.ip_address(der[start:at])))
        return tuple(names)
    return ()
