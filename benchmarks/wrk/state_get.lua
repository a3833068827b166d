-- P4: GET /device/v3/<uuid>/state as a random device, with that device's own API key.
package.path = os.getenv("FLEETSTATUS_BENCH_LUA") .. "/?.lua;" .. package.path
local common = require("common")
local uuids, keys, n

setup = common.setup
done = common.done

function init(args)
  common.seed(id)
  uuids, keys = common.load_devices()
  n = #uuids
end

function request()
  local i = math.random(n)
  return wrk.format("GET", "/device/v3/" .. uuids[i] .. "/state", { ["Authorization"] = "Bearer " .. keys[i] })
end
