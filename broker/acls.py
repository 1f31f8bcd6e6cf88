"""Granting and revoking ACLs on a broker whose authorizer is on (`BrokerConfig(authorizer=True)`).

aiokafka's admin client has no ACL methods, and the jars of the local broker hold no
`kafka-acls` tool (kafka-tools is not among them), so the CreateAcls and DeleteAcls requests
(version 1, the oldest Kafka 4 accepts) are sent with aiokafka's protocol classes, many ACLs in
one request. No JVM starts: an ACL change takes milliseconds, not seconds.

The controller answers CreateAcls once the ACLs are in the metadata log; a broker enforces them
a moment later, once it has read them. So `create_acls` then asks the broker (DescribeAcls, which
it answers from its own authorizer) until it lists them: a client started next is judged by them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest_v1, DeleteAclsRequest_v1, DescribeAclsRequest_v1
from aiokafka.protocol.api import Request

from broker.errors import LocalBrokerError
from transport.connection import Connection

# The protocol's codes (org.apache.kafka.common.resource.ResourceType, PatternType, acl.AclOperation).
RESOURCE_TYPES = {"TOPIC": 2, "GROUP": 3, "CLUSTER": 4, "TRANSACTIONAL_ID": 5}
PATTERN_TYPES = {"LITERAL": 3, "PREFIXED": 4}
OPERATIONS = {
    "READ": 3, "WRITE": 4, "CREATE": 5, "DELETE": 6, "ALTER": 7, "DESCRIBE": 8,
    "CLUSTER_ACTION": 9, "DESCRIBE_CONFIGS": 10, "ALTER_CONFIGS": 11, "IDEMPOTENT_WRITE": 12,
}  # fmt: skip
ALLOW = 3
ANY = 1  # a filter's "any" resource type, pattern type, operation or permission
POLL_S = 0.05
CLUSTER_NAME = "kafka-cluster"
ANY_HOST = "*"


@dataclass(frozen=True)
class Acl:
    """One ALLOW ACL: `principal` (`"User:alice"`) may do `operation` on a resource."""

    principal: str
    operation: str  # a key of OPERATIONS
    resource_type: str  # a key of RESOURCE_TYPES
    name: str = CLUSTER_NAME
    pattern: str = "LITERAL"  # or PREFIXED

    def __str__(self) -> str:
        prefixed = " (prefix)" if self.pattern == "PREFIXED" else ""
        return f"{self.operation} on {self.resource_type} {self.name!r}{prefixed}"

    def entry(self) -> tuple[Any, ...]:
        """The ACL as a CreateAcls v1 creation (equally a DeleteAcls v1 filter matching only it)."""
        return (
            RESOURCE_TYPES[self.resource_type], self.name, PATTERN_TYPES[self.pattern],
            self.principal, ANY_HOST, OPERATIONS[self.operation], ALLOW,
        )  # fmt: skip


class _CreateAcls(Request[CreateAclsRequest_v1]):  # type: ignore[misc]  # aiokafka has no type hints
    API_KEY = 30

    def __init__(self, acls: Sequence[Acl]) -> None:
        self.acls = acls

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class([acl.entry() for acl in self.acls])


class _DeleteAcls(Request[DeleteAclsRequest_v1]):  # type: ignore[misc]  # aiokafka has no type hints
    API_KEY = 31

    def __init__(self, acls: Sequence[Acl]) -> None:
        self.acls = acls

    def build(self, request_struct_class: type[DeleteAclsRequest_v1]) -> DeleteAclsRequest_v1:
        return request_struct_class([acl.entry() for acl in self.acls])


class _DescribeAcls(Request[DescribeAclsRequest_v1]):  # type: ignore[misc]  # aiokafka has no type hints
    API_KEY = 29

    def __init__(self, principal: str) -> None:
        self.principal = principal

    def build(self, request_struct_class: type[DescribeAclsRequest_v1]) -> DescribeAclsRequest_v1:
        return request_struct_class(ANY, None, ANY, self.principal, None, ANY, ANY)


async def create_acls(connection: Connection, acls: Sequence[Acl], timeout_s: float = 30.0) -> None:
    """Grant every ACL in `acls` (one request) and wait until the broker enforces them; `connection`
    authenticates as a super user."""
    async with _admin(connection, timeout_s) as admin:
        response = await admin._send_request(_CreateAcls(acls))  # aiokafka has no public ACL call
        _raise_errors("create", [(code, message) for code, message in response.creation_responses])
        for principal in sorted({acl.principal for acl in acls}):
            wanted = {acl.entry() for acl in acls if acl.principal == principal}
            while not wanted <= await _described(admin, principal):
                await asyncio.sleep(POLL_S)


async def _described(admin: AIOKafkaAdminClient, principal: str) -> set[tuple[Any, ...]]:
    """The ACLs of `principal` the broker enforces, as `Acl.entry()` tuples."""
    response = await admin._send_request(_DescribeAcls(principal))
    _raise_errors("describe", [(response.error_code, response.error_message)])
    return {
        (resource_type, name, pattern, *acl)
        for resource_type, name, pattern, acls in response.resources
        for acl in acls
    }


async def delete_acls(connection: Connection, acls: Sequence[Acl]) -> None:
    """Revoke every ACL in `acls` (one request); `connection` authenticates as a super user."""
    response = await _send(connection, _DeleteAcls(acls))
    _raise_errors("delete", [(code, message) for code, message, _ in response.filter_responses])


async def _send(connection: Connection, request: Request[Any]) -> Any:
    async with _admin(connection, 30.0) as admin:
        return await admin._send_request(request)  # aiokafka has no public ACL call


@contextlib.asynccontextmanager
async def _admin(connection: Connection, timeout_s: float) -> AsyncIterator[AIOKafkaAdminClient]:
    """An admin client, started; what is done with it must end within `timeout_s` (TimeoutError)."""
    admin = AIOKafkaAdminClient(**connection.kafka_options())
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            yield admin
    finally:
        await admin.close()


def _raise_errors(action: str, results: list[tuple[int, str | None]]) -> None:
    errors = [f"{for_code(code).__name__}: {message}" for code, message in results if code]
    if errors:
        raise LocalBrokerError(f"could not {action} ACLs: {'; '.join(errors)}")
