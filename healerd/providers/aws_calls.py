"""The AWS API as the `aws` provider calls it: boto3 clients made once per service, every call in a bounded
thread pool (boto3 is synchronous) with botocore's adaptive retries, every operation recorded, and every AWS
error a ProviderError naming the call and the resource."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .aws_options import AwsOptions
from .base import ProviderError


class AwsCalls:
    def __init__(self, opts: AwsOptions, name: str) -> None:
        self.opts = opts
        self._pool = ThreadPoolExecutor(max_workers=opts.max_workers, thread_name_prefix=f"healerd-aws-{name}")
        self._clients: dict[str, Any] = {}
        self.calls: list[str] = []  # every AWS operation made (for the IAM policy check and the audit)

    def _session(self) -> Any:
        import boto3

        session = boto3.session.Session(profile_name=self.opts.profile, region_name=self.opts.region)
        if self.opts.role_arn:
            sts = session.client("sts", endpoint_url=self.opts.endpoint_url)
            creds = sts.assume_role(RoleArn=self.opts.role_arn, RoleSessionName="healerd")["Credentials"]
            session = boto3.session.Session(
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
                region_name=self.opts.region,
            )
        return session

    def client(self, service: str) -> Any:
        client = self._clients.get(service)
        if client is None:
            from botocore.config import Config as BotoConfig

            cfg = BotoConfig(
                retries={"mode": "adaptive", "max_attempts": self.opts.max_attempts},
                connect_timeout=10,
                read_timeout=30,
                max_pool_connections=self.opts.max_workers,
            )
            client = self._session().client(service, endpoint_url=self.opts.endpoint_url, config=cfg)
            client.meta.events.register("before-call", self._record_call)
            self._clients[service] = client
        return client

    def _record_call(self, model: Any = None, **_: Any) -> None:
        if model is not None:
            self.calls.append(f"{model.service_model.signing_name}:{model.name}")

    async def call(self, service: str, operation: str, resource: str = "", **kwargs: Any) -> Any:
        """One AWS call in the pool; errors name the call and the resource."""
        from botocore.exceptions import BotoCoreError, ClientError

        def run() -> Any:
            return getattr(self.client(service), operation)(**kwargs)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, run)
        except ClientError as exc:
            err = exc.response.get("Error", {})
            action = f"{service}:{_camel(operation)}"
            raise ProviderError(
                f"{action} on {resource or 'the account'} failed: {err.get('Code', 'Error')}: {err.get('Message', '')}"
            ) from None
        except BotoCoreError as exc:
            raise ProviderError(f"{service}:{_camel(operation)} on {resource or 'the account'} failed: {exc}") from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _camel(operation: str) -> str:
    return "".join(part.capitalize() for part in operation.split("_"))
