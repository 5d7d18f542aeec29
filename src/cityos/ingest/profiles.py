"""Device profiles: how a kind of device is decoded and mapped onto entities.

A profile names its codec, the expected uplink interval (device health uses it), the
target entity type, and a list of :class:`AttributeMapping`: entity attribute name,
an arithmetic expression over the decoded fields and the device's parameters, and the
UN/CEFACT unit code. Expressions are Python-syntax arithmetic, nothing else:
numbers, names, ``a.b`` for nested decoded fields, ``+ - * /``, parentheses, and
``point(longitude, latitude)`` which makes a GeoJSON point (the attribute becomes a
GeoProperty). A name is looked up in the decoded data first, then in the device's
parameters: the ultrasonic gauge maps ``waterLevel = mounting_height_m - distance_m``
where ``mounting_height_m`` is a parameter of each gauge.

A mapping whose decoded fields are absent from an uplink is skipped (devices send
partial payloads); a device lacking a parameter its profile declares, or a
non-numeric operand, is a ``mapping-error``. Mappings with ``on_device=True`` go to
the device's own ``Device`` entity (e.g. ``batteryLevel``), the others to the
measurement target: the device's configured target entity id, else
``urn:ngsi-ld:{entity_type}:{dev_eui}`` (the device's own entity when the type is
``Device``).
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cityos.ingest.codecs.cayenne_lpp import CAYENNE_LPP_CODEC, unit_code_of
from cityos.ingest.codecs.demo_devices import PYTHON_CODECS
from cityos.ingest.model import (
    Codec,
    DecodedUplink,
    EntityWrite,
    IngestError,
    Uplink,
    device_entity_id,
)

if TYPE_CHECKING:
    from cityos.ingest.registry import RegisteredDevice

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


class _MissingFieldError(Exception):
    """A decoded field the expression needs is not in this uplink."""


Evaluator = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]  # Any: JSON values


def compile_expression(text: str) -> Evaluator:
    """Compile a mapping expression (see the module docstring); ``ValueError`` if it
    uses anything but the allowed arithmetic."""
    tree = ast.parse(text, mode="eval").body

    def build(node: ast.expr) -> Evaluator:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            constant = node.value
            return lambda data, params: constant
        if isinstance(node, ast.Name | ast.Attribute):
            path = _dotted(node)
            return lambda data, params: _lookup(path, data, params)
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            apply, left, right = _BINARY[type(node.op)], build(node.left), build(node.right)
            return lambda data, params: _arithmetic(apply, left(data, params), right(data, params))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            inner = build(node.operand)
            return lambda data, params: _arithmetic(operator.sub, 0, inner(data, params))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "point"
            and len(node.args) == 2
            and not node.keywords
        ):
            lon, lat = build(node.args[0]), build(node.args[1])
            return lambda data, params: _point(lon(data, params), lat(data, params))
        raise ValueError(f"Not allowed in a mapping expression: {ast.unparse(node)!r}")

    return build(tree)


def _dotted(node: ast.expr) -> tuple[str, ...]:
    if isinstance(node, ast.Name):
        return (node.id,)
    if isinstance(node, ast.Attribute):
        return (*_dotted(node.value), node.attr)
    raise ValueError(f"Not a field name: {ast.unparse(node)!r}")


def _lookup(path: tuple[str, ...], data: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
    value: Any = data  # Any: JSON values
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            break
        value = value[part]
    else:
        return value
    if len(path) == 1 and path[0] in params:
        return params[path[0]]
    if path[0] in data:
        raise IngestError("mapping-error", f"Decoded field {'.'.join(path)} is missing")
    raise _MissingFieldError(".".join(path))


def _arithmetic(apply: Callable[[Any, Any], Any], left: Any, right: Any) -> Any:
    if isinstance(left, bool) or isinstance(right, bool):
        raise IngestError("mapping-error", "Arithmetic on a true/false value")
    if not isinstance(left, int | float) or not isinstance(right, int | float):
        raise IngestError("mapping-error", f"Arithmetic on non-numbers {left!r}, {right!r}")
    try:
        result = apply(left, right)
    except ZeroDivisionError:
        raise IngestError("mapping-error", "Division by zero in a mapping") from None
    # Binary floating point makes 5.0 - 3.2 = 1.7999999999999998; sensors have far
    # less precision than 1e-9.
    return round(result, 9) if isinstance(result, float) else result


def _point(lon: Any, lat: Any) -> dict[str, Any]:  # Any: GeoJSON
    if not isinstance(lon, int | float) or not isinstance(lat, int | float):
        raise IngestError("mapping-error", f"point() needs numbers, got {lon!r}, {lat!r}")
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise IngestError("mapping-error", f"point({lon}, {lat}) is outside WGS 84")
    return {"type": "Point", "coordinates": [lon, lat]}


@dataclass(frozen=True)
class AttributeMapping:
    """One entity attribute computed from an uplink (see the module docstring)."""

    attribute: str
    expression: str
    unit_code: str | None = None
    on_device: bool = False
    evaluate: Evaluator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "evaluate", compile_expression(self.expression))


@dataclass(frozen=True)
class DeviceProfile:
    """A kind of device: codec, expected interval, target entity type and mappings.

    ``codec`` ``None`` means the network server decodes (``use_network_decoded``).
    ``parameters`` names the device parameters the mappings need (each device must
    have them). ``controlled_property`` and ``device_category`` are the Smart Data
    Model Device fields written on registration.
    """

    name: str
    codec: Codec | None
    expected_interval_s: float
    entity_type: str
    mappings: tuple[AttributeMapping, ...]
    use_network_decoded: bool = False
    parameters: tuple[str, ...] = ()
    controlled_property: tuple[str, ...] = ()
    device_category: tuple[str, ...] = ("sensor",)
    description: str = ""

    def decode(self, uplink: Uplink) -> DecodedUplink:
        """The uplink's decoded data: the codec's, or the network server's when the
        profile says so. Raises :class:`IngestError` (codec reasons)."""
        if self.use_network_decoded or self.codec is None:
            if uplink.network_decoded is None:
                raise IngestError(
                    "codec-error", f"Profile {self.name} expects the network server to decode"
                )
            return DecodedUplink(uplink.network_decoded)
        return self.codec.decode_uplink(uplink.payload, uplink.f_port or 0, uplink.observed_at)

    def target_entity_id(self, device: RegisteredDevice) -> str:
        """Where this device's measurements go."""
        if device.target_entity_id:
            return device.target_entity_id
        if self.entity_type == "Device":
            return device_entity_id(device.dev_eui)
        return f"urn:ngsi-ld:{self.entity_type}:{device.dev_eui}"

    def measurements(
        self, device: RegisteredDevice, uplink: Uplink, decoded: DecodedUplink
    ) -> list[EntityWrite]:
        """The entity writes of one decoded uplink (``mapping-error`` on bad data)."""
        missing = [name for name in self.parameters if name not in device.parameters]
        if missing:
            raise IngestError(
                "mapping-error",
                f"Device {device.dev_eui} lacks parameter(s) {', '.join(missing)} "
                f"that profile {self.name} needs",
            )
        measured: dict[str, dict[str, Any]] = {}  # Any: NGSI-LD attribute JSON
        on_device: dict[str, dict[str, Any]] = {}
        for mapping in self.mappings:
            try:
                value = mapping.evaluate(decoded.data, device.parameters)
            except _MissingFieldError:
                continue
            attribute = _attribute(value, uplink.observed_at, mapping.unit_code)
            (on_device if mapping.on_device else measured)[mapping.attribute] = attribute
        return _writes(self, device, measured, on_device)


def _attribute(value: Any, observed_at: str, unit_code: str | None) -> dict[str, Any]:
    is_point = isinstance(value, dict) and value.get("type") == "Point"
    attribute: dict[str, Any] = {  # Any: NGSI-LD attribute JSON
        "type": "GeoProperty" if is_point else "Property",
        "value": value,
        "observedAt": observed_at,
    }
    if unit_code is not None and not is_point:
        attribute["unitCode"] = unit_code
    return attribute


def _writes(
    profile: DeviceProfile,
    device: RegisteredDevice,
    measured: dict[str, dict[str, Any]],
    on_device: dict[str, dict[str, Any]],
) -> list[EntityWrite]:
    writes = []
    target = profile.target_entity_id(device)
    own = device_entity_id(device.dev_eui)
    if measured and target == own:
        on_device = {**measured, **on_device}
    elif measured:
        writes.append(EntityWrite(target, profile.entity_type, measured))
    if on_device:
        writes.append(EntityWrite(own, "Device", on_device))
    return writes


@dataclass(frozen=True)
class CayenneProfile(DeviceProfile):
    """Cayenne LPP: every decoded channel becomes an attribute of the device's own
    ``Device`` entity, named like the decoded key (``temperature_3``, ``gps_1``; GPS
    channels are GeoProperties), with the LPP type's unit code."""

    def measurements(
        self, device: RegisteredDevice, uplink: Uplink, decoded: DecodedUplink
    ) -> list[EntityWrite]:
        attributes = {}
        for key, value in decoded.data.items():
            if isinstance(value, dict) and "latitude" in value:
                value = _point(value.get("longitude"), value.get("latitude"))
            attributes[key] = _attribute(value, uplink.observed_at, unit_code_of(key))
        if not attributes:
            return []
        return [EntityWrite(device_entity_id(device.dev_eui), "Device", attributes)]


_BATTERY = AttributeMapping("batteryLevel", "battery_pct / 100", "C62", on_device=True)
"""Battery charge as the Smart Data Model's 0..1 ``batteryLevel`` (C62: unit "one")."""

BUILTIN_PROFILES: dict[str, DeviceProfile] = {
    profile.name: profile
    for profile in (
        DeviceProfile(
            name="water-level",
            codec=PYTHON_CODECS["water-level"],
            expected_interval_s=600,
            entity_type="WaterObserved",
            mappings=(
                AttributeMapping("waterLevel", "mounting_height_m - distance_m", "MTR"),
                _BATTERY,
            ),
            parameters=("mounting_height_m",),
            controlled_property=("waterLevel",),
            description="Ultrasonic river water-level gauge / 超音波式水位計",
        ),
        DeviceProfile(
            name="rain-gauge",
            codec=PYTHON_CODECS["rain-gauge"],
            expected_interval_s=600,
            entity_type="WeatherObserved",
            mappings=(AttributeMapping("precipitation", "precipitation_mm", "MMT"), _BATTERY),
            controlled_property=("precipitation",),
            description="Tipping-bucket rain gauge / 転倒ます型雨量計",
        ),
        DeviceProfile(
            name="snow-depth",
            codec=PYTHON_CODECS["snow-depth"],
            expected_interval_s=1800,
            entity_type="WeatherObserved",
            mappings=(
                AttributeMapping("snowHeight", "snow_depth_m", "MTR"),
                AttributeMapping("temperature", "temperature_c", "CEL"),
                _BATTERY,
            ),
            controlled_property=("snowHeight", "temperature"),
            description="Snow-depth sensor / 積雪深計",
        ),
        DeviceProfile(
            name="sprinkler",
            codec=PYTHON_CODECS["sprinkler"],
            expected_interval_s=900,
            entity_type="DeviceMeasurement",
            mappings=(
                AttributeMapping("numValue", "flow_l_min", "L2"),  # L2: litre per minute
                AttributeMapping("pumpOn", "pump_on"),
                AttributeMapping("fault", "fault"),
                AttributeMapping("waterTemperature", "water_temperature_c", "CEL"),
                _BATTERY,
            ),
            controlled_property=("waterFlow",),
            device_category=("actuator", "sensor"),
            description="Snow-melting sprinkler monitor / 消雪装置監視",
        ),
        DeviceProfile(
            name="gps-tracker",
            codec=PYTHON_CODECS["gps-tracker"],
            expected_interval_s=300,
            entity_type="Device",
            mappings=(
                AttributeMapping("location", "point(longitude, latitude)"),
                AttributeMapping("sos", "sos"),
                _BATTERY,
            ),
            controlled_property=("location",),
            device_category=("tracker",),
            description="Children's GPS watch-over tracker / 子ども見守りGPS端末",
        ),
        DeviceProfile(
            name="temperature-humidity",
            codec=PYTHON_CODECS["temperature-humidity"],
            expected_interval_s=600,
            entity_type="WeatherObserved",
            mappings=(
                AttributeMapping("temperature", "temperature_c", "CEL"),
                AttributeMapping("relativeHumidity", "humidity_pct / 100", "C62"),
                _BATTERY,
            ),
            controlled_property=("temperature", "relativeHumidity"),
            description="Temperature/humidity sensor / 温湿度センサー",
        ),
        CayenneProfile(
            name="cayenne-lpp",
            codec=CAYENNE_LPP_CODEC,
            expected_interval_s=900,
            entity_type="Device",
            mappings=(),
            description="Any Cayenne LPP device: channels on the Device entity / Cayenne LPP",
        ),
    )
}
"""The built-in profiles by name (``cityos devices profiles`` lists them)."""
