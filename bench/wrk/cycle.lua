-- LOCK -> POST (serial + 1) -> UNLOCK, over and over, on a state of this thread's own. Run with
-- as many threads as connections: each thread then drives exactly one connection, in order.
-- Its RESULT line has get.lua's fields (but bytes) and cycles, cps, cp50_us, cp99_us (per
-- cycle), lock_fail, post_fail, unlock_fail and statuses (STATUS:COUNT,...).
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock, bench_timespec *ts);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1e6 + tonumber(ts.tv_nsec) / 1e3
end

local threads, next_tid = {}, 0
function setup(thread)
  next_tid = next_tid + 1
  thread:set("tid", next_tid)
  table.insert(threads, thread)
end

-- Per thread; globals, so that done() can collect them with thread:get().
cycles, lock_fail, post_fail, unlock_fail = 0, 0, 0, 0
lat, statuses = {}, {}

local step, serial, n, started = 0, 0, 0, 0
local path, pre, post, headers, lock_id, lock_body
local function new_lock()
  n = n + 1
  lock_id = string.format("%08x-0000-4000-8000-%012x", tid, n)
  lock_body = string.format(
    '{"ID":"%s","Operation":"OperationTypeApply","Info":"","Who":"bench","Version":"1.11.4","Created":"%s","Path":""}',
    lock_id, os.date("!%Y-%m-%dT%H:%M:%SZ"))
end

function init(args)
  path = "/v1/state/dev/" .. os.getenv("BENCH_PREFIX") .. "-" .. tid
  local f = assert(io.open(os.getenv("BENCH_STATE_FILE"), "rb"))
  local body = f:read("*a")
  f:close()
  pre, post = body:match('^(.-"serial":)%d+(,.*)$')
  assert(pre, "no serial in the state file")
  headers = { ["Authorization"] = "Basic " .. os.getenv("BENCH_BASIC"),
              ["Content-Type"] = "application/json" }
  new_lock()
end

function request()
  if step == 0 then
    started = now_us()
    return wrk.format("LOCK", path, headers, lock_body)
  elseif step == 1 then
    return wrk.format("POST", path .. "?ID=" .. lock_id, headers, pre .. (serial + 1) .. post)
  else
    return wrk.format("UNLOCK", path, headers, lock_body)
  end
end

function response(status, hdrs, body)
  statuses[status] = (statuses[status] or 0) + 1
  if step == 0 then
    if status == 200 then step = 1 else lock_fail = lock_fail + 1 end
  elseif step == 1 then
    if status == 200 then serial = serial + 1 else post_fail = post_fail + 1 end
    step = 2
  else
    if status ~= 200 then unlock_fail = unlock_fail + 1 end
    cycles = cycles + 1
    lat[#lat + 1] = now_us() - started
    step = 0
    new_lock()
  end
end

function done(summary, latency, requests)
  local all, total, st, lf, pf, uf, non2xx = {}, 0, {}, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    total = total + t:get("cycles")
    lf, pf, uf = lf + t:get("lock_fail"), pf + t:get("post_fail"), uf + t:get("unlock_fail")
    for _, v in ipairs(t:get("lat")) do all[#all + 1] = v end
    for k, v in pairs(t:get("statuses")) do st[k] = (st[k] or 0) + v end
  end
  table.sort(all)
  local function pct(p)
    if #all == 0 then return 0 end
    return all[math.floor((#all - 1) * p + 0.5) + 1]
  end
  local codes = {}
  for k, v in pairs(st) do
    codes[#codes + 1] = k .. ":" .. v
    if k < 200 or k > 299 then non2xx = non2xx + v end
  end
  table.sort(codes)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format("RESULT rps=%.2f p50_us=%.1f p99_us=%.1f requests=%d non2xx=%d errors=%d cycles=%d cps=%.2f cp50_us=%.1f cp99_us=%.1f lock_fail=%d post_fail=%d unlock_fail=%d statuses=%s\n",
    summary.requests / secs, latency:percentile(50), latency:percentile(99), summary.requests,
    non2xx, e.connect + e.read + e.write + e.timeout, total, total / secs, pct(0.5), pct(0.99),
    lf, pf, uf, table.concat(codes, ",")))
end
