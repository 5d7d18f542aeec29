"""The device registry: which devices exist, their profile, parameters and target.

Persistence (decided): the registry is kept AS ENTITIES through the broker, so it works
on every storage backend, across processes, and is visible in the NGSI-LD API:

- each device is its Smart Data Model ``Device`` entity ``urn:ngsi-ld:Device:{deveui}``
  with ``name``, ``location``, ``owner``, ``controlledProperty``, ``deviceCategory``,
  ``refDeviceModel`` (a Relationship to ``urn:ngsi-ld:DeviceModel:{profile}``, one
  ``DeviceModel`` entity per profile) and the registry's own fields ``deviceProfile``,
  ``tags``, ``parameters`` (JsonProperty) and ``targetEntity`` (Relationship);
- each gateway is a ``Gateway`` entity ``urn:ngsi-ld:Gateway:{gateway id}`` with
  ``location`` and ``dateLastValueReported``.

:meth:`DeviceRegistry.lookup` is a dict read (it runs for every uplink). The cache is
loaded by :meth:`DeviceRegistry.load`, kept current by :meth:`DeviceRegistry.on_changes`
(register it as an ``ObservedStorage`` listener: changes written in this process,
through the API as well), and refreshed for a DevEUI it does not know at most once
every ``miss_retry_s`` seconds (a device registered by another process is found
within that delay; unknown devices cannot hammer the database). Call :meth:`load`
again to pick up edits made by other processes to devices already cached.

Gateways: :meth:`note_gateways` only updates memory (cheap per uplink);
:meth:`flush_gateways` writes the changed ones in one batch (the pipeline calls it
after its own commits, or on a timer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cityos.broker.changes import EntityChange
from cityos.broker.context import CompiledContext
from cityos.broker.entities import ExpandTerm
from cityos.broker.model import StoredEntity, instance_value
from cityos.broker.service import ContextBroker
from cityos.core.errors import CityosError
from cityos.ingest.model import GatewayReception, device_entity_id
from cityos.ingest.profiles import BUILTIN_PROFILES, DeviceProfile
from cityos.storage.base import DEFAULT_TENANT, EntityScan

log = logging.getLogger(__name__)

_REGISTRY_TERMS = (
    "name",
    "deviceProfile",
    "location",
    "owner",
    "tags",
    "parameters",
    "targetEntity",
)
_MISS_MEMORY_LIMIT = 100_000


@dataclass(frozen=True)
class RegisteredDevice:
    """A device the platform knows. ``dev_eui`` is 16 lower-case hex digits;
    ``location`` is (longitude, latitude) in WGS 84."""

    dev_eui: str
    name: str
    profile: DeviceProfile
    location: tuple[float, float] | None = None
    owner: str | None = None
    tags: tuple[str, ...] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)  # Any: numbers or text
    target_entity_id: str | None = None

    @property
    def entity_id(self) -> str:
        """The device's own ``Device`` entity id."""
        return device_entity_id(self.dev_eui)


@dataclass
class GatewayState:
    """What the registry knows of one gateway."""

    gateway_id: str
    last_seen: str | None = None
    longitude: float | None = None
    latitude: float | None = None
    altitude_m: float | None = None


class DeviceRegistry:
    """Devices and gateways, cached in memory and kept as entities (see the module)."""

    def __init__(
        self,
        broker: ContextBroker,
        *,
        tenant: str = DEFAULT_TENANT,
        expand: ExpandTerm | None = None,
        profiles: Mapping[str, DeviceProfile] = BUILTIN_PROFILES,
        miss_retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.broker = broker
        self.tenant = tenant
        self.profiles = profiles
        self.miss_retry_s = miss_retry_s
        self._clock = clock
        self._expand = expand or CompiledContext().expand
        self._iri = {term: self._expand(term) for term in (*_REGISTRY_TERMS, "Device")}
        self._devices: dict[str, RegisteredDevice] = {}
        self._missed_at: dict[str, float] = {}
        self._gateways: dict[str, GatewayState] = {}
        self._dirty_gateways: set[str] = set()
        self._models_written: set[str] = set()

    # -- devices ----------------------------------------------------------------------

    def load(self) -> int:
        """(Re)load every registered device and gateway from the broker; return the
        number of devices."""
        devices: dict[str, RegisteredDevice] = {}
        scan = EntityScan(
            types_any=frozenset({self._iri["Device"]}),
            attrs_any=frozenset({self._iri["deviceProfile"]}),
        )
        if self.broker.storage.tenant_exists(self.tenant):
            for _, entity in self.broker.storage.scan(self.tenant, scan):
                device = self._device_from_entity(entity)
                if device is not None:
                    devices[device.dev_eui] = device
            gateway_type = self._expand("Gateway")
            for _, entity in self.broker.storage.scan(
                self.tenant, EntityScan(types_any=frozenset({gateway_type}))
            ):
                state = self._gateway_from_entity(entity)
                self._gateways.setdefault(state.gateway_id, state)
        self._devices = devices
        self._missed_at.clear()
        return len(devices)

    def lookup(self, dev_eui: str) -> RegisteredDevice | None:
        """The device with this DevEUI (lower case), or ``None`` if unknown."""
        device = self._devices.get(dev_eui)
        if device is not None:
            return device
        now = self._clock()
        missed_at = self._missed_at.get(dev_eui)
        if missed_at is not None and now - missed_at < self.miss_retry_s:
            return None
        if len(self._missed_at) >= _MISS_MEMORY_LIMIT:
            self._missed_at.clear()
        self._missed_at[dev_eui] = now
        entity = self.broker.storage.get(self.tenant, device_entity_id(dev_eui))
        device = self._device_from_entity(entity) if entity is not None else None
        if device is not None:
            self._devices[dev_eui] = device
        return device

    def devices(self) -> list[RegisteredDevice]:
        """Every cached device, by DevEUI."""
        return [self._devices[key] for key in sorted(self._devices)]

    def register(self, device: RegisteredDevice) -> None:
        """Create or update one device (see :meth:`register_many`)."""
        errors = self.register_many([device])
        if errors:
            raise errors[0][1]

    def register_many(self, devices: Iterable[RegisteredDevice]) -> list[tuple[str, CityosError]]:
        """Create or update devices in one transaction; fields of an existing ``Device``
        entity that the registry does not own (battery, radio, measurements) are kept.
        Returns the (DevEUI, error) of each device the broker refused."""
        devices = list(devices)
        models = {d.profile.name: d.profile for d in devices}
        items: list[tuple[Any, ExpandTerm]] = [
            (self._model_payload(profile), self._expand)
            for name, profile in models.items()
            if name not in self._models_written
        ]
        items += [(self._device_payload(device), self._expand) for device in devices]
        result = self.broker.batch_upsert(self.tenant, items, replace=False)
        self._models_written.update(models)
        failed = dict(result.errors)
        errors = []
        for device in devices:
            error = failed.get(device.entity_id)
            if error is None:
                self._devices[device.dev_eui] = device
                self._missed_at.pop(device.dev_eui, None)
            else:
                errors.append((device.dev_eui, error))
        return errors

    def remove(self, dev_eui: str) -> bool:
        """Delete a device's entity; ``False`` if it was not registered."""
        self._devices.pop(dev_eui, None)
        result = self.broker.batch_delete(self.tenant, [device_entity_id(dev_eui)])
        return bool(result.success)

    def on_changes(self, changes: list[EntityChange]) -> None:
        """``ObservedStorage`` listener: keep the cache in step with committed writes."""
        device_prefix = "urn:ngsi-ld:Device:"
        for change in changes:
            if change.tenant != self.tenant or not change.entity_id.startswith(device_prefix):
                continue
            dev_eui = change.entity_id.removeprefix(device_prefix)
            if change.after is None:
                self._devices.pop(dev_eui, None)
            elif change.before is None or self._registry_fields_changed(change):
                device = self._device_from_entity(change.after)
                if device is not None:
                    self._devices[dev_eui] = device
                    self._missed_at.pop(dev_eui, None)

    def _registry_fields_changed(self, change: EntityChange) -> bool:
        # Uplinks update Device entities constantly (battery, radio); only a change of
        # a registry field needs the device to be read again.
        before = (change.before or {}).get("attrs", {})
        after = (change.after or {}).get("attrs", {})
        for iri in self._iri.values():
            then, now = before.get(iri), after.get(iri)
            if then is not now and then != now:  # unchanged lists are shared, not copied
                return True
        return False

    # -- gateways ---------------------------------------------------------------------

    def note_gateways(self, receptions: Iterable[GatewayReception], time: str) -> None:
        """Remember that these gateways heard an uplink at ``time`` (ISO 8601; memory
        only: :meth:`flush_gateways` persists)."""
        observed_at = time
        for reception in receptions:
            state = self._gateways.get(reception.gateway_id)
            if state is None:
                state = self._gateways[reception.gateway_id] = GatewayState(reception.gateway_id)
            if state.last_seen is None or observed_at > state.last_seen:
                state.last_seen = observed_at
            if reception.latitude is not None and reception.longitude is not None:
                state.latitude, state.longitude = reception.latitude, reception.longitude
                state.altitude_m = reception.altitude_m
            self._dirty_gateways.add(reception.gateway_id)

    def flush_gateways(self) -> int:
        """Write the gateways changed since the last flush in one batch; return how many."""
        if not self._dirty_gateways:
            return 0
        dirty, self._dirty_gateways = self._dirty_gateways, set()
        items = [(self._gateway_payload(self._gateways[g]), self._expand) for g in sorted(dirty)]
        result = self.broker.batch_upsert(self.tenant, items, replace=False)
        for entity_id, error in result.errors:
            log.warning("Gateway %s not stored: %s", entity_id, error)
        return len(result.success)

    def gateways(self) -> list[GatewayState]:
        """Every known gateway, by id."""
        return [self._gateways[key] for key in sorted(self._gateways)]

    # -- entity forms -----------------------------------------------------------------

    def _device_payload(self, device: RegisteredDevice) -> dict[str, Any]:  # Any: NGSI-LD
        profile = device.profile
        payload: dict[str, Any] = {  # Any: NGSI-LD attribute JSON
            "id": device.entity_id,
            "type": "Device",
            "name": {"type": "Property", "value": device.name},
            "deviceProfile": {"type": "Property", "value": profile.name},
            "refDeviceModel": {"type": "Relationship", "object": _model_id(profile.name)},
            "deviceCategory": {"type": "Property", "value": list(profile.device_category)},
            "parameters": {"type": "JsonProperty", "json": dict(device.parameters)},
            "tags": {"type": "Property", "value": list(device.tags)},
        }
        if profile.controlled_property:
            payload["controlledProperty"] = {
                "type": "Property",
                "value": list(profile.controlled_property),
            }
        if device.location is not None:
            payload["location"] = _point(*device.location)
        if device.owner:
            payload["owner"] = {"type": "Property", "value": [device.owner]}
        if device.target_entity_id:
            payload["targetEntity"] = {"type": "Relationship", "object": device.target_entity_id}
        return payload

    def _model_payload(self, profile: DeviceProfile) -> dict[str, Any]:  # Any: NGSI-LD
        payload: dict[str, Any] = {  # Any: NGSI-LD attribute JSON
            "id": _model_id(profile.name),
            "type": "DeviceModel",
            "name": {"type": "Property", "value": profile.name},
            "deviceCategory": {"type": "Property", "value": list(profile.device_category)},
            "expectedUplinkInterval": {
                "type": "Property",
                "value": profile.expected_interval_s,
                "unitCode": "SEC",
            },
        }
        if profile.description:
            payload["description"] = {"type": "Property", "value": profile.description}
        if profile.controlled_property:
            payload["controlledProperty"] = {
                "type": "Property",
                "value": list(profile.controlled_property),
            }
        return payload

    def _gateway_payload(self, state: GatewayState) -> dict[str, Any]:  # Any: NGSI-LD
        payload: dict[str, Any] = {  # Any: NGSI-LD attribute JSON
            "id": f"urn:ngsi-ld:Gateway:{state.gateway_id}",
            "type": "Gateway",
            "name": {"type": "Property", "value": state.gateway_id},
        }
        if state.last_seen is not None:
            payload["dateLastValueReported"] = {"type": "Property", "value": state.last_seen}
        if state.longitude is not None and state.latitude is not None:
            payload["location"] = _point(state.longitude, state.latitude)
        return payload

    def _value(self, entity: StoredEntity, term: str) -> Any:  # Any: JSON value
        instances = entity.get("attrs", {}).get(self._iri[term])
        if not instances:
            return None
        return instance_value(instances[0])

    def _device_from_entity(self, entity: StoredEntity) -> RegisteredDevice | None:
        profile_name = self._value(entity, "deviceProfile")
        if profile_name is None:
            return None
        profile = self.profiles.get(profile_name)
        dev_eui = entity["id"].removeprefix("urn:ngsi-ld:Device:")
        if profile is None:
            log.warning("Device %s has unknown profile %r; ignored", dev_eui, profile_name)
            return None
        location = self._value(entity, "location")
        coordinates = location.get("coordinates") if isinstance(location, dict) else None
        owner = self._value(entity, "owner")
        parameters = self._value(entity, "parameters")
        tags = self._value(entity, "tags")
        name = self._value(entity, "name")
        return RegisteredDevice(
            dev_eui=dev_eui,
            name=name if isinstance(name, str) else dev_eui,
            profile=profile,
            location=(coordinates[0], coordinates[1]) if coordinates else None,
            owner=owner[0] if isinstance(owner, list) and owner else owner,
            tags=tuple(tags) if isinstance(tags, list) else (),
            parameters=parameters if isinstance(parameters, dict) else {},
            target_entity_id=self._value(entity, "targetEntity"),
        )

    def _gateway_from_entity(self, entity: StoredEntity) -> GatewayState:
        location = self._value(entity, "location")
        coordinates = location.get("coordinates") if isinstance(location, dict) else None
        iri = self._expand("dateLastValueReported")
        last = entity.get("attrs", {}).get(iri)
        return GatewayState(
            gateway_id=entity["id"].removeprefix("urn:ngsi-ld:Gateway:"),
            last_seen=instance_value(last[0]) if last else None,
            longitude=coordinates[0] if coordinates else None,
            latitude=coordinates[1] if coordinates else None,
        )


def _model_id(profile_name: str) -> str:
    return f"urn:ngsi-ld:DeviceModel:{profile_name}"


def _point(longitude: float, latitude: float) -> dict[str, Any]:  # Any: NGSI-LD GeoProperty
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [longitude, latitude]}}
