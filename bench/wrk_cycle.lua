-- wrk script: cycle through pre-signed webhook requests, count answers per second and per status.
-- Usage: wrk -s bench/wrk_cycle.lua URL -- REQUESTS_FILE URL_PATH OUT_JSON
-- REQUESTS_FILE lines: "header-name<TAB>header-value<TAB>body" (bodies are one-line JSON).

local requests_ = {}
local count = 0
local index = 0
counts = {}    -- epoch second -> responses (read back by done() through thread:get)
statuses = {}  -- HTTP status -> responses
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  local file, path = args[1], args[2]
  for line in io.lines(file) do
    local name, value, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
    if name then
      count = count + 1
      requests_[count] = wrk.format("POST", path, {["Content-Type"] = "application/json", [name] = value}, body)
    end
  end
  if count == 0 then error("no requests in " .. file) end
end

function request()
  index = index + 1
  if index > count then index = 1 end
  return requests_[index]
end

function response(status, headers, body)
  local second = os.time()
  counts[second] = (counts[second] or 0) + 1
  statuses[status] = (statuses[status] or 0) + 1
end

local function json_map(t)
  local parts = {}
  for k, v in pairs(t) do table.insert(parts, string.format('"%s": %d', tostring(k), v)) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local merged_counts, merged_statuses = {}, {}
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("counts") or {}) do merged_counts[k] = (merged_counts[k] or 0) + v end
    for k, v in pairs(thread:get("statuses") or {}) do merged_statuses[k] = (merged_statuses[k] or 0) + v end
  end
  local pcts = {}
  for _, p in ipairs({1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9, 99.99, 100}) do
    table.insert(pcts, string.format('"%s": %d', tostring(p), latency:percentile(p)))
  end
  local e = summary.errors
  local f = assert(io.open(os.getenv("BENCH_WRK_OUT"), "w"))
  f:write(string.format(
    '{"duration_us": %d, "requests": %d, "bytes": %d, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d}, "latency_us": {"min": %d, "max": %d, "mean": %f, "stdev": %f, ' ..
    '"percentiles": {%s}}, "per_second": %s, "statuses": %s}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.max, latency.mean, latency.stdev, table.concat(pcts, ", "),
    json_map(merged_counts), json_map(merged_statuses)))
  f:close()
end
