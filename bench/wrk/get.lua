-- GET each path listed in the file given as argument, in turn (prebuilt requests).
dofile(debug.getinfo(1, "S").source:sub(2):match("(.*/)") .. "common.lua")

local prepared, index = {}, 0

function init(args)
  for path in io.lines(args[1]) do
    table.insert(prepared, wrk.format("GET", path))
  end
end

function request()
  index = index % #prepared + 1
  return prepared[index]
end
