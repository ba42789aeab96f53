"""Remediation: the engine and its reconcilers, the safety gates, incidents and the operator's controls, playbooks
(their steps, actions and the runbook that journals them), the fleet's primitives, quarantine and forensics,
and what the API shows of them. Imports nothing: a module is imported by its own name."""
