-- wrk script for bench_kv.py: one kind of request over a fixed key set, and a JSON summary.
--   MODE   get | set | mget | mset | v1get   (what each request is)
--   KEYS   how many keys exist (k0 .. k<KEYS-1>), BATCH keys per mget/mset, VALUE_BYTES per value
-- Bodies are made once per thread (64 of them, used in turn) so that wrk spends its time sending.
local mode = os.getenv("MODE") or "get"
local nkeys = tonumber(os.getenv("KEYS") or "1000")
local batch = tonumber(os.getenv("BATCH") or "100")
local value = string.rep("v", tonumber(os.getenv("VALUE_BYTES") or "100"))
local made = {}
local turn = 0

local function key()
  return "k" .. math.random(0, nkeys - 1)
end

local function make()
  if mode == "get" then
    return wrk.format("GET", "/get?key=" .. key())
  elseif mode == "v1get" then
    return wrk.format("GET", "/v1/kv/" .. key())
  elseif mode == "set" then
    return wrk.format("POST", "/set", {["Content-Type"] = "application/json"},
      '{"key":"' .. key() .. '","value":"' .. value .. '"}')
  elseif mode == "mget" then
    local names = {}
    for i = 1, batch do names[i] = '"' .. key() .. '"' end
    return wrk.format("POST", "/v1/mget", {["Content-Type"] = "application/json"},
      '{"keys":[' .. table.concat(names, ",") .. ']}')
  elseif mode == "mset" then
    local pairs_ = {}
    for i = 1, batch do pairs_[i] = '"' .. key() .. '":"' .. value .. '"' end
    return wrk.format("POST", "/v1/mset", {["Content-Type"] = "application/json"},
      '{"items":{' .. table.concat(pairs_, ",") .. '}}')
  end
  error("unknown MODE " .. mode)
end

function init(args)
  math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16) % 100000)
  for i = 1, 64 do made[i] = make() end
end

function request()
  turn = turn % #made + 1
  return made[turn]
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests":%d,"seconds":%.6f,"non2xx":%d,"connect":%d,"read":%d,"write":%d,"timeout":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration / 1e6, errors.status, errors.connect, errors.read, errors.write,
    errors.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
