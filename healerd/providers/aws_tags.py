"""The tags the `aws` provider writes on instances and groups, and how it reads them back."""

from __future__ import annotations

TAG_QUARANTINED = "healerd:quarantined"
TAG_INCIDENT = "healerd:incident"
TAG_SERVICE = "healerd:service"
TAG_MACHINE = "healerd:machine"
ISOLATION_TAG = "healerd:isolation"
TAG_RETIRED = "healerd:retired"  # a healthy surplus instance scaled in (the IAM policy lets healerd end it)
TAG_ORIGINAL_GROUPS = "healerd:original-groups"  # eni=sg,sg;eni=sg - recorded before isolating


def tag_map(items: list[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in items or []}


def encode_groups(groups: dict[str, list[str]]) -> str:
    return ";".join(f"{eni}={','.join(sgs)}" for eni, sgs in sorted(groups.items()))


def decode_groups(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for part in text.split(";"):
        eni, _, sgs = part.partition("=")
        if eni:
            out[eni] = [g for g in sgs.split(",") if g]
    return out
