-- Shared by the bench's wrk scripts (loaded with dofile from each): counts every response by
-- HTTP status per thread, keeps a few error bodies, and prints the result as one JSON line
-- (prefixed "BENCH_WRK_RESULT ") for bench/loadgen.py.

statuses = {}
samples = {}
local threads = {}

-- The contents of the files listed in `listing` (one path per line), in order.
function read_listed_files(listing)
  local contents = {}
  for path in io.lines(listing) do
    local file = assert(io.open(path, "rb"))
    table.insert(contents, file:read("*a"))
    file:close()
  end
  return contents
end

function setup(thread)
  table.insert(threads, thread)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if (status < 200 or status >= 300) and #samples < 3 then
    table.insert(samples, status .. ": " .. string.sub(body or "", 1, 300))
  end
end

local function quote(text)
  local escaped = string.gsub(text, '[%c"\\]', function(char)
    return string.format("\\u%04x", string.byte(char))
  end)
  return '"' .. escaped .. '"'
end

function done(summary, latency, requests)
  local counts, errors, non2xx = {}, {}, 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses") or {}) do
      counts[#counts + 1] = quote(tostring(status)) .. ":" .. count
      if status < 200 or status >= 300 then
        non2xx = non2xx + count
      end
    end
    for _, sample in ipairs(thread:get("samples") or {}) do
      errors[#errors + 1] = quote(sample)
    end
  end
  local e = summary.errors
  io.write("BENCH_WRK_RESULT {"
    .. '"requests":' .. summary.requests
    .. ',"duration_us":' .. summary.duration
    .. ',"non2xx":' .. non2xx
    .. ',"statuses":{' .. table.concat(counts, ",") .. "}"
    .. ',"socket_errors":{"connect":' .. e.connect .. ',"read":' .. e.read
    .. ',"write":' .. e.write .. ',"timeout":' .. e.timeout .. "}"
    .. ',"error_samples":[' .. table.concat(errors, ",") .. "]"
    .. ',"p50_us":' .. latency:percentile(50)
    .. ',"p95_us":' .. latency:percentile(95)
    .. ',"p99_us":' .. latency:percentile(99)
    .. ',"mean_us":' .. latency.mean
    .. ',"max_us":' .. latency.max
    .. "}\n")
end
