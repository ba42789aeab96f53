"""The `aws` provider's options (its config section): where and how it calls AWS, which subnet each zone's
machines are launched in, how it quarantines, where bundles are mirrored. Apart from the provider, so that its
quarantine half reads them without importing it."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..durations import parse_duration, require_above_zero
from .base import ProviderOptions

SUBNET_ID = re.compile(r"subnet-[0-9A-Za-z]+")


class QuarantineOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    asg_action: Literal["detach", "standby"] = "detach"
    # healerd launches the replacement itself: decrementing keeps the group from launching a second one
    # from *its* template; the replacement is attached (desired back up) once it is in service.
    asg_decrement: bool = True
    isolation_security_group: str | None = None  # default: created per VPC, no ingress, no egress
    two_step: bool = False  # first an all-open group (existing flows become untracked), then the isolation one
    snapshot: bool = True
    termination_protection: bool = True


class S3Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    bucket: str
    prefix: str = "healerd/forensics/"
    sse: Literal["AES256", "aws:kms"] | None = "AES256"
    kms_key_id: str | None = None


class AwsOptions(ProviderOptions):
    region: str
    profile: str | None = None
    role_arn: str | None = None
    endpoint_url: str | None = None
    max_workers: int = Field(default=8, ge=1, le=64)
    max_attempts: int = Field(default=10, ge=1, le=50)  # botocore retries, adaptive mode
    port: int | None = Field(default=None, ge=1, le=65535)  # machine address = private IP[:port]
    launch_timeout: float = 600.0
    drain_timeout: float = 300.0
    quarantine: QuarantineOptions = Field(default_factory=QuarantineOptions)
    s3: S3Options | None = None
    #: Availability Zone -> the subnet healerd launches that zone's machines in: the provider's zones, in this
    #: order (healerd spreads a service's machines evenly across them)
    subnets: dict[str, str] = Field(default_factory=dict)

    @field_validator("subnets")
    @classmethod
    def _subnets(cls, v: dict[str, str]) -> dict[str, str]:
        zone_of: dict[str, str] = {}
        for az, subnet in v.items():
            if not az.strip():
                raise ValueError(
                    "an Availability Zone name is empty: key each subnet by its zone, as in "
                    "subnets: {eu-west-1a: subnet-0abc, eu-west-1b: subnet-0def}"
                )
            if not SUBNET_ID.fullmatch(subnet):
                raise ValueError(f"zone {az!r} has {subnet!r}: give the id of a subnet in {az} (subnet-...)")
            if subnet in zone_of:
                raise ValueError(
                    f"zones {zone_of[subnet]!r} and {az!r} both have {subnet}: a subnet lies in one zone, "
                    "give each zone a subnet of its own"
                )
            zone_of[subnet] = az
        return v

    @field_validator("launch_timeout", "drain_timeout", mode="before")
    @classmethod
    def _durations(cls, v: object, info: ValidationInfo) -> float:
        # a wait of 0 gives up before the instance could start or drain
        what = info.field_name or "duration"
        example = "10m" if what == "launch_timeout" else "5m"
        return require_above_zero(parse_duration(v, what=what), what=what, example=example)
