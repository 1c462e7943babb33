-- POST /v1/invocations with the images of the mix in turn, each with a new input id.
-- Arguments: a file listing one body-suffix file per image, and the id prefix. A suffix file
-- holds `","content":"<base64>"}}`, so a body is a constant prefix, the id, and the suffix:
-- no base64 or JSON work per request.
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "common.lua")

local suffixes, id_prefix, counter, index = {}, "", 0, 0

function init(args)
  suffixes = read_listed_files(args[1])
  id_prefix = args[2]
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  index = index % #suffixes + 1
  local body = '{"input":{"id":"' .. id_prefix .. counter .. suffixes[index]
  return wrk.format("POST", "/v1/invocations", nil, body)
end
