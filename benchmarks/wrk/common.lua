-- Shared by the P4/P5 scripts: the device list, a per-thread random stream, a JSON summary.
-- FLEETSTATUS_BENCH_DEVICES names a file of "<uuid> <api key>" lines (written by benchmarks/load.py).

local M = {}
local threads = {}

function M.load_devices()
  local path = os.getenv("FLEETSTATUS_BENCH_DEVICES")
  local uuids, keys = {}, {}
  for line in io.lines(path) do
    local uuid, key = line:match("^(%x+) (%x+)$")
    if uuid then
      uuids[#uuids + 1] = uuid
      keys[#keys + 1] = key
    end
  end
  return uuids, keys
end

function M.setup(thread)
  thread:set("id", #threads + 1)
  threads[#threads + 1] = thread
end

function M.seed(id)
  math.randomseed(os.time() * 1000 + (id or 0) * 7919)
end

-- One line the harness parses: requests, errors by kind, latency percentiles in microseconds.
function M.done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, "write": %d, ' ..
    '"status": %d, "timeout": %d, "p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end

return M
