"""Rotations: which machines take traffic. `base` (the contract, `none`), `file`, `elbv2`, and `haproxy` with
its runtime-API client (`haproxy_api`)."""
