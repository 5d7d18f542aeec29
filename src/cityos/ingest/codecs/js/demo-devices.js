// Codecs of the cityos Toyama demo devices, TTN decodeUplink contract.
// Byte layouts: see src/cityos/ingest/codecs/demo_devices.py (big-endian; battery in %).
// One file decodes all six kinds by fPort, so a device model can use it whatever it is.

function u16(b, i) { return (b[i] << 8) | b[i + 1]; }
function i16(b, i) { var v = u16(b, i); return v > 0x7fff ? v - 0x10000 : v; }
function i32(b, i) { return (b[i] << 24) | (b[i + 1] << 16) | (b[i + 2] << 8) | b[i + 3]; }

var LAYOUTS = {
  1: {size: 3, decode: function (b) {
    return {distance_m: u16(b, 0) / 1000, battery_pct: b[2]};
  }},
  2: {size: 5, decode: function (b) {
    return {tips: u16(b, 0), precipitation_mm: u16(b, 2) / 10, battery_pct: b[4]};
  }},
  3: {size: 5, decode: function (b) {
    return {snow_depth_m: u16(b, 0) / 1000, temperature_c: i16(b, 2) / 10, battery_pct: b[4]};
  }},
  4: {size: 6, decode: function (b) {
    return {pump_on: (b[0] & 1) === 1, fault: (b[0] & 2) === 2, flow_l_min: u16(b, 1) / 10,
            water_temperature_c: i16(b, 3) / 10, battery_pct: b[5]};
  }},
  5: {size: 10, decode: function (b) {
    return {latitude: i32(b, 0) / 1e6, longitude: i32(b, 4) / 1e6, sos: (b[8] & 1) === 1,
            battery_pct: b[9]};
  }},
  6: {size: 4, decode: function (b) {
    return {temperature_c: i16(b, 0) / 10, humidity_pct: b[2] / 2, battery_pct: b[3]};
  }}
};

function decodeUplink(input) {
  var layout = LAYOUTS[input.fPort];
  if (!layout) return {errors: ["unknown FPort"]};
  if (input.bytes.length !== layout.size) {
    return {errors: ["payload must be " + layout.size + " bytes, got " + input.bytes.length]};
  }
  return {data: layout.decode(input.bytes)};
}
