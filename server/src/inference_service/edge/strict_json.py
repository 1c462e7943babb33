"""A strict check of REST JSON bodies at the edge, before the transcoder (issues 18 and 21),
rendered into ``envoy/envoy.yaml`` by ``inference_service.edge.config`` (``${STRICT_JSON_FILTER}``).

The transcoder parses a body with protobuf's lenient JSON parser: a duplicate key is accepted
(the last one wins: ``{"id": "a", "id": "b"}``), single-quoted pseudo-JSON is accepted, and a
field the message does not define is dropped silently. None of its options refuses these, so
a Lua filter does, on the routes whose HTTP rule has a body only (it is disabled on every
other route, so it costs nothing there). It walks the body once (``string.find`` over each
string, so an 11 MiB base64 ``content`` is one scan) and answers 400 (``{"code": 3, ...}``
through the local reply mappers) for:

* a body that is not strict JSON (single quotes, a bare word, a trailing comma, ...);
* a key twice in one object (compared after unescaping);
* a field the message does not define, by its proto or JSON name (map keys are free), named
  in the message with its path (``input.contnet``), cut at 100 bytes.

Everything else (types, values, enums) is left to the transcoder and the server.
"""

from __future__ import annotations

import json
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from inference_service.edge.guards import SERVICE, _http_rules
from inference_service.errors import CUT_MARK, MAX_ECHO_BYTES

FILTER_NAME = "strict_json"


def _schema(message: Descriptor, schemas: dict[str, Any]) -> str:
    """Adds ``message`` (and the messages it holds) to ``schemas``: full name -> {"fields":
    {name: child full name or ""}, "map_value": ...}; returns its full name."""
    name = message.full_name
    if name in schemas:
        return name
    entry: dict[str, Any] = {}
    schemas[name] = entry
    if message.GetOptions().map_entry:
        value = message.fields_by_name["value"]
        entry["map_value"] = _child(value, schemas)
        return name
    if name.startswith("google.protobuf."):
        entry["free"] = True  # well-known types have JSON forms of their own
        return name
    fields: dict[str, str] = {}
    for field in message.fields:
        child = _child(field, schemas)
        fields[field.name] = child
        fields[field.json_name] = child
    entry["fields"] = fields
    return name


def _child(field: FieldDescriptor, schemas: dict[str, Any]) -> str:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return _schema(cast(Descriptor, field.message_type), schemas)
    return ""


def _lua_value(value: Any) -> str:
    if isinstance(value, dict):
        items = ", ".join(f"[{json.dumps(k)}] = {_lua_value(v)}" for k, v in sorted(value.items()))
        return "{" + items + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def lua_source() -> str:
    schemas: dict[str, Any] = {}
    for _, _, body, message in _http_rules(SERVICE):
        if body == "*":
            _schema(message, schemas)
    return (
        _LUA.replace("@SCHEMAS@", _lua_value(schemas))
        .replace("@MAX_ECHO@", str(MAX_ECHO_BYTES))
        .replace("@CUT_MARK@", json.dumps(CUT_MARK))
    )


def filter_config() -> dict[str, Any]:
    """The HTTP filter, disabled unless a route enables it (``route_config``)."""
    return {
        "name": FILTER_NAME,
        "disabled": True,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": lua_source()},
        },
    }


def route_config(message_full_name: str) -> dict[str, Any]:
    """typed_per_filter_config enabling the check on a route whose body is
    ``message_full_name``."""
    return {
        FILTER_NAME: {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            "config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute",
                "source_code": {"inline_string": lua_source().replace("@ROOT@", message_full_name)},
            },
        }
    }


_LUA = r"""
local SCHEMAS = @SCHEMAS@
local ROOT = "@ROOT@"
local find, sub, byte, gsub = string.find, string.sub, string.byte, string.gsub
local ESCAPES = {
  ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t"
}

local function cut(text)
  if #text > @MAX_ECHO@ then
    return sub(text, 1, @MAX_ECHO@) .. @CUT_MARK@
  end
  return text
end

local function unescape(raw)
  if not find(raw, "\\", 1, true) then
    return raw
  end
  raw = gsub(raw, "\\u(%x%x%x%x)", function(hex)
    local code = tonumber(hex, 16)
    if code < 128 then
      return string.char(code)
    end
    return "\\u" .. string.lower(hex)
  end)
  return (gsub(raw, "\\([^u])", function(c) return ESCAPES[c] or ("\\" .. c) end))
end

local function check(s)
  local pos = 1
  local function skip()
    pos = find(s, "[^ \t\r\n]", pos) or (#s + 1)
  end
  local function fail(what)
    error({ message = what }, 0)
  end
  local function str()
    local start = pos + 1
    local i = start
    while true do
      local j = find(s, '["\\%c]', i)
      if not j then fail("the body is not JSON: a string is not closed") end
      local c = byte(s, j)
      if c == 34 then
        pos = j + 1
        return sub(s, start, j - 1)
      elseif c == 92 then
        i = j + 2
      else
        fail("the body is not JSON: a control character in a string")
      end
    end
  end
  local value
  local function object(schema, path, depth)
    pos = pos + 1
    local seen = {}
    skip()
    if sub(s, pos, pos) == "}" then pos = pos + 1 return end
    while true do
      skip()
      local c = sub(s, pos, pos)
      if c == "'" then fail("the body is not JSON: keys and strings take double quotes") end
      if c ~= '"' then fail("the body is not JSON: a key must be a string") end
      local key = unescape(str())
      local where = path == "" and key or (path .. "." .. key)
      if seen[key] then fail("duplicate key in the JSON body: " .. cut(where)) end
      seen[key] = true
      local child = nil
      if schema ~= nil and not schema.free then
        if schema.map_value ~= nil then
          child = SCHEMAS[schema.map_value]
        else
          local found = schema.fields[key]
          if found == nil then fail("unknown field in the JSON body: " .. cut(where)) end
          child = SCHEMAS[found]
        end
      end
      skip()
      if sub(s, pos, pos) ~= ":" then fail("the body is not JSON: a key without a value") end
      pos = pos + 1
      value(child, where, depth + 1)
      skip()
      c = sub(s, pos, pos)
      pos = pos + 1
      if c == "}" then return end
      if c ~= "," then fail("the body is not JSON: expected ',' or '}'") end
    end
  end
  local function array(schema, path, depth)
    pos = pos + 1
    skip()
    if sub(s, pos, pos) == "]" then pos = pos + 1 return end
    while true do
      value(schema, path, depth + 1)
      skip()
      local c = sub(s, pos, pos)
      pos = pos + 1
      if c == "]" then return end
      if c ~= "," then fail("the body is not JSON: expected ',' or ']'") end
    end
  end
  value = function(schema, path, depth)
    if depth > 64 then fail("the JSON body is nested too deeply") end
    skip()
    local c = sub(s, pos, pos)
    if c == "{" then
      object(schema, path, depth)
    elseif c == "[" then
      array(schema, path, depth)
    elseif c == '"' then
      str()
    elseif c == "'" then
      fail("the body is not JSON: keys and strings take double quotes")
    else
      local _, e = find(s, "^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
      if e == nil then
        _, e = find(s, "^true", pos)
        if e == nil then _, e = find(s, "^false", pos) end
        if e == nil then _, e = find(s, "^null", pos) end
      end
      if e == nil then fail("the body is not JSON: unexpected character at byte " .. pos) end
      pos = e + 1
    end
  end
  value(SCHEMAS[ROOT], "", 0)
  skip()
  if pos <= #s then fail("the body is not JSON: more after the value, at byte " .. pos) end
end

function envoy_on_request(request_handle)
  local body = request_handle:body()
  if body == nil then
    return
  end
  local ok, err = pcall(check, body:getBytes(0, body:length()))
  if not ok then
    local message = type(err) == "table" and err.message or "the body is not JSON"
    request_handle:respond({ [":status"] = "400" }, message)
  end
end
"""
