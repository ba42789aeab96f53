"""Whether a rollout may start (healerd.rollouts.control.admit): every refusal an operator can meet, with the
status the API answers and what to do, decided from explicit inputs; and the one case that is admitted."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from remediation_rig import Rig

from healerd.config import Config, Mode
from healerd.rollouts.control import admit
from healerd.rollouts.record import Rollout, RolloutRefused, Stage


def with_versions(rig: Rig, *versions: str) -> Config:
    """The rig's config, its image given these versions (all alike)."""
    image = rig.config.images["demo-web"]
    more = {v: image.versions["v1"] for v in versions}
    images = {"demo-web": replace(image, versions={**image.versions, **more})}
    return replace(rig.config, images=images)


def admitted(config: Config, service: str = "web", version: str = "v2", **given: Any) -> Any:
    inputs: dict[str, Any] = {
        "acting": True,
        "active": {},
        "known_good": {},
        "mode": Mode.AUTO,
        "paused": False,
        "remediating": False,
    }
    return admit(config, service, version, **{**inputs, **given})


async def test_a_rollout_of_a_new_version_to_an_idle_service_in_auto_is_admitted(rig_factory: Any) -> None:
    rig: Rig = await rig_factory(mode=Mode.AUTO)
    svc, image, known_good = admitted(with_versions(rig, "v2"))
    assert (svc.name, image.name, known_good) == ("web", "demo-web", "v1")
    # a promotion recorded since (not the config's known_good) is what the rollout starts from
    assert admitted(with_versions(rig, "v2", "v3"), version="v3", known_good={"demo-web": "v2"})[2] == "v2"


RUNNING = Rollout("01R", "web", "demo-web", "v3", "v1", Stage.CANARY)
OTHER = Rollout("01S", "api", "demo-web", "v3", "v1", Stage.BAKE)


@pytest.mark.parametrize(
    ("given", "status", "error", "says"),
    [
        ({"service": "nope"}, 404, "unknown service", "services: web"),
        ({"version": "v9"}, 404, "unknown version", "add it under images.<image>.versions"),
        ({"acting": False}, 409, "not acting", "a follower or stopping"),
        ({"active": {"web": RUNNING}}, 409, "a rollout is running", "healerd rollout abort web"),
        ({"version": "v1"}, 409, "already known-good", "already the known-good version of demo-web"),
        ({"mode": Mode.OBSERVE}, 409, "not acting", "web is in mode observe; switch to auto first"),
        ({"paused": True}, 409, "not acting", "healerd is paused (resume it)"),
        ({"remediating": True}, 409, "remediation running", "try again once it ends"),
        ({"active": {"api": OTHER}}, 409, "image busy", "one at a time per image"),
    ],
)
async def test_each_refusal_names_its_reason_and_what_to_do(
    rig_factory: Any, given: dict[str, Any], status: int, error: str, says: str
) -> None:
    rig: Rig = await rig_factory(mode=Mode.AUTO)
    with pytest.raises(RolloutRefused) as refused:
        admitted(with_versions(rig, "v2"), **given)
    assert (refused.value.status, str(refused.value)) == (status, error)
    assert says in refused.value.detail
