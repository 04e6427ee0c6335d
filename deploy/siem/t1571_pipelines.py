"""pySigma processing pipelines: the t1571-sensor's ECS JSON fields to each SIEM's data model.

The rules in sigma/ use the field names the sensor prints (`sensor run`, one ECS JSON object
per line, nested; flattened with dots). Where a backend reads another data model, the
pipeline here renames the fields (and the few values that are enumerations there). What each
mapping assumes about ingestion is in README.md beside this file.

The rules in sigma-sysmon/ use Sysmon Event ID 3 names and go through each backend's own
pipeline instead (see `sysmon_pipeline`): that is the point of them.
"""

from dataclasses import dataclass

from sigma.pipelines.sumologic import sumologic_cse_pipeline
from sigma.processing.conditions import IncludeFieldCondition
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations import (
    AddConditionTransformation,
    FieldMappingTransformation,
    MapStringTransformation,
)
from sigma.processing.transformations.base import ValueTransformation
from sigma.types import SigmaNumber, SigmaString

# Splunk: the JSON lines arrive with this sourcetype (KV_MODE = json keeps the dotted names).
SPLUNK_SOURCETYPE = "t1571:sensor"
# Fields the sensor prints as JSON arrays that rules match on.
SPLUNK_ARRAY_FIELDS = ["sensor.matched.protocol"]

# Google SecOps: what a parser for the sensor's JSON fills in the Unified Data Model.
UDM_FIELDS = {
    "event.action": "metadata.product_event_type",
    "event.kind": "security_result.alert_state",
    "event.severity": "security_result.severity",
    "rule.id": "security_result.rule_id",
    "network.direction": "network.direction",
    "process.executable": "principal.process.file.full_path",
    "process.name": "principal.process.file.names",
    "process.pid": "principal.process.pid",
    "process.parent.executable": "principal.process.parent_process.file.full_path",
    "user.name": "principal.user.userid",
    "host.name": "principal.hostname",
    "source.ip": "principal.ip",
    "destination.ip": "target.ip",
    "destination.port": "target.port",
    # The sensor's allow rule that suppressed the connection (security_result.action ALLOW).
    "sensor.allow_rule": "security_result.action_details",
    # memfd, fd, deleted, tmp, dev_shm: a tag on the executable's file.
    "sensor.process.location": "principal.process.file.tags",
    # What the flow's first bytes added (protocol_mismatch, ...): the result's details.
    "sensor.matched.protocol": "security_result.category_details",
}
# UDM enumerations for the values the rules compare.
UDM_VALUES = {
    "network.direction": {"egress": "OUTBOUND", "ingress": "INBOUND"},
    "security_result.alert_state": {"alert": "ALERTING", "event": "NOT_ALERTING"},
}
UDM_SEVERITY = {3: "HIGH", 2: "MEDIUM", 1: "LOW"}

# IBM QRadar: built-in properties where QRadar has one, custom event properties (JSON
# expressions on the log source type the events arrive as; see README.md) for the rest.
QRADAR_FIELDS = {
    "destination.ip": "destinationip",
    "destination.port": "destinationport",
    "source.ip": "sourceip",
    "user.name": "username",
    "process.executable": "Process Path",
    "process.name": "Process Name",
    "process.pid": "Process ID",
    "process.parent.executable": "Parent Process Path",
    "event.action": "T1571 Event Action",
    "event.kind": "T1571 Event Kind",
    "event.severity": "T1571 Severity",
    "rule.id": "T1571 Rule ID",
    "network.direction": "T1571 Network Direction",
    "sensor.allow_rule": "T1571 Allow Rule",
    "sensor.process.location": "T1571 Process Location",
    "sensor.matched.protocol": "T1571 Protocol Findings",
}


# What QRadarAQL_fields_pipeline maps these Sysmon names to.
QRADAR_SYSMON_FIELDS = {
    "Image": "Process Path",
    "DestinationIp": "destinationip",
    "DestinationPort": "destinationport",
    "Initiated": "Initiated",
}


@dataclass
class _SeverityToUDM(ValueTransformation):
    """event.severity 3/2/1 -> the UDM severity enumeration (numbers, so not a string map)."""

    def apply_value(self, field: str, val: SigmaNumber) -> SigmaString | None:
        return SigmaString(UDM_SEVERITY[int(val.number)]) if int(val.number) in UDM_SEVERITY else None


def splunk_pipeline() -> ProcessingPipeline:
    return ProcessingPipeline(
        name="t1571-sensor ECS JSON in Splunk",
        priority=20,
        items=[
            ProcessingItem(
                identifier="t1571_splunk_sourcetype",
                transformation=AddConditionTransformation({"sourcetype": SPLUNK_SOURCETYPE}),
            ),
            # KV_MODE = json names a JSON array's values `field{}`.
            ProcessingItem(
                identifier="t1571_splunk_arrays",
                transformation=FieldMappingTransformation(
                    {f: f + "{}" for f in SPLUNK_ARRAY_FIELDS}
                ),
            ),
        ],
    )


def sumologic_pipeline() -> ProcessingPipeline:
    # Cloud SIEM keeps fields its record schema does not know under fields['...']: the
    # backend's own pipeline wraps the ECS names so, with nothing to rename.
    return sumologic_cse_pipeline()


def logscale_pipeline() -> ProcessingPipeline:
    # LogScale's JSON parser (parseJson()) keeps the dotted ECS names as field names.
    return ProcessingPipeline(name="t1571-sensor ECS JSON in LogScale", priority=20, items=[])


def secops_pipeline() -> ProcessingPipeline:
    items = [
        ProcessingItem(
            identifier="t1571_udm_severity",
            field_name_conditions=[IncludeFieldCondition(["event.severity"])],
            transformation=_SeverityToUDM(),
        ),
    ]
    items.append(
        ProcessingItem(
            identifier="t1571_udm_fields", transformation=FieldMappingTransformation(UDM_FIELDS)
        )
    )
    for field, values in UDM_VALUES.items():
        items.append(
            ProcessingItem(
                identifier="t1571_udm_values_" + field.replace(".", "_"),
                field_name_conditions=[IncludeFieldCondition([field])],
                transformation=MapStringTransformation(values),
            )
        )
    return ProcessingPipeline(name="t1571-sensor ECS JSON to Google SecOps UDM", priority=20, items=items)


def qradar_pipeline() -> ProcessingPipeline:
    return ProcessingPipeline(
        name="t1571-sensor ECS JSON to QRadar properties",
        priority=20,
        items=[
            ProcessingItem(
                identifier="t1571_qradar_fields",
                transformation=FieldMappingTransformation(QRADAR_FIELDS),
            )
        ],
    )


def sqlite_pipeline() -> ProcessingPipeline:
    # The test's SQLite table has one column per flattened ECS field: nothing to rename.
    return ProcessingPipeline(name="t1571-sensor ECS JSON in SQLite", priority=20, items=[])


def sysmon_pipeline(backend: str):
    """Each backend's own pipeline for Sysmon-style linux network_connection rules."""
    if backend == "splunk":
        return None  # Sysmon for Linux fields are searched as named.
    if backend == "sumologic":
        return sumologic_cse_pipeline()
    if backend == "crowdstrike":
        from sigma.pipelines.crowdstrike import crowdstrike_falcon_pipeline

        return crowdstrike_falcon_pipeline()
    if backend == "secops":
        from sigma.pipelines.secops import secops_udm_pipeline

        return secops_udm_pipeline()
    if backend == "qradar":
        # QRadarAQL_fields_pipeline (0.4.0) calls a string method on every value of its host
        # fields and crashes (AttributeError) on `DestinationIp|cidr`, `DestinationPort|gt` and
        # numeric ports. The same names it would give, mapped here.
        return ProcessingPipeline(
            name="Sysmon network_connection fields to QRadar properties",
            priority=20,
            items=[
                ProcessingItem(
                    identifier="t1571_qradar_sysmon_fields",
                    transformation=FieldMappingTransformation(QRADAR_SYSMON_FIELDS),
                )
            ],
        )
    if backend == "sqlite":
        return None
    raise ValueError(f"no Sysmon pipeline for backend {backend!r}")
