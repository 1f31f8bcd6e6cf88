"""Granting and revoking ACLs on a broker whose authorizer is on (`BrokerConfig(authorizer=True)`).

aiokafka's admin client has no ACL methods, and the jars of the local broker hold no
`kafka-acls` tool (kafka-tools is not among them), so the CreateAcls and DeleteAcls requests
(version 1, the oldest Kafka 4 accepts) are sent with aiokafka's protocol classes, many ACLs in
one request. No JVM starts: an ACL change takes milliseconds, not seconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest_v1, DeleteAclsRequest_v1
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


async def create_acls(connection: Connection, acls: Sequence[Acl]) -> None:
    """Grant every ACL in `acls` (one request); `connection` authenticates as a super user."""
    response = await _send(connection, _CreateAcls(acls))
    _raise_errors("create", [(code, message) for code, message in response.creation_responses])


async def delete_acls(connection: Connection, acls: Sequence[Acl]) -> None:
    """Revoke every ACL in `acls` (one request); `connection` authenticates as a super user."""
    response = await _send(connection, _DeleteAcls(acls))
    _raise_errors("delete", [(code, message) for code, message, _ in response.filter_responses])


async def _send(connection: Connection, request: Request[Any]) -> Any:
    admin = AIOKafkaAdminClient(**connection.kafka_options())
    try:
        async with asyncio.timeout(30.0):
            await admin.start()
            return await admin._send_request(request)  # aiokafka has no public ACL call
    finally:
        await admin.close()


def _raise_errors(action: str, results: list[tuple[int, str | None]]) -> None:
    errors = [f"{for_code(code).__name__}: {message}" for code, message in results if code]
    if errors:
        raise LocalBrokerError(f"could not {action} ACLs: {'; '.join(errors)}")
