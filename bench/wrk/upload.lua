-- POST /v1/invocations:upload with the images of the mix in turn, each the raw body (no base64,
-- no JSON), with a new input id in the query.
-- Arguments: a file listing one image file per line, and the id prefix.
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "common.lua")

local images, id_prefix, counter, index = {}, "", 0, 0

function init(args)
  images = read_listed_files(args[1])
  id_prefix = args[2]
  wrk.headers["Content-Type"] = "application/octet-stream"
end

function request()
  counter = counter + 1
  index = index % #images + 1
  return wrk.format("POST", "/v1/invocations:upload?id=" .. id_prefix .. counter, nil, images[index])
end
