"""The `aws` provider's options (its config section): where and how it calls AWS, how it quarantines, where
bundles are mirrored. Apart from the provider, so that its quarantine half reads them without importing it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from ..durations import parse_duration, require_above_zero
from .base import ProviderOptions


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

    @field_validator("launch_timeout", "drain_timeout", mode="before")
    @classmethod
    def _durations(cls, v: object, info: ValidationInfo) -> float:
        # a wait of 0 gives up before the instance could start or drain
        what = info.field_name or "duration"
        example = "10m" if what == "launch_timeout" else "5m"
        return require_above_zero(parse_duration(v, what=what), what=what, example=example)
