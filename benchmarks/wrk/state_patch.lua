-- P5: PATCH /device/v3/state as a random device, with bodies shaped like the balena supervisor's.
-- Most reports carry only what changed (metrics); some are full (versions, addresses, apps);
-- a few are the minimal ones agents send at start-up.
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

local function metrics()
  return string.format(
    '"status": "Idle", "cpu_usage": %d, "cpu_temp": %d, "memory_usage": %d, "memory_total": 4000000000, ' ..
    '"storage_usage": %d, "storage_total": 32000000000, "is_undervolted": false, "api_port": 48484, ' ..
    '"api_secret": "0123456789abcdef0123456789abcdef"',
    math.random(0, 100), math.random(35, 80), math.random(300000000, 3500000000), math.random(2000000000, 30000000000))
end

local function full(uuid)
  local commit = string.sub(uuid, 1, 7) .. "0000000000000000000000000"
  return metrics() .. string.format(
    ', "name": "device", "is_online": true, "os_version": "balenaOS 6.0.13", "os_variant": "prod", ' ..
    '"supervisor_version": "16.7.1", "ip_address": "10.0.%d.%d 172.17.0.1", "mac_address": "dc:a6:32:00:11:22", ' ..
    '"provisioning_progress": null, "provisioning_state": "", "download_progress": null, ' ..
    '"apps": {"a1b2c3d4e5f60718293a4b5c6d7e8f90": {"release_uuid": "%s", "releases": {"%s": ' ..
    '{"update_status": "done", "services": {"main": {"image": "registry2.balena-cloud.com/v2/abc@sha256:1", ' ..
    '"status": "Running", "download_progress": null}}}}}}',
    math.random(0, 255), math.random(1, 254), commit, commit)
end

function request()
  local i = math.random(n)
  local uuid = uuids[i]
  local r = math.random(100)
  local inner
  if r <= 70 then
    inner = metrics()
  elseif r <= 90 then
    inner = full(uuid)
  else
    inner = '"status": "Idle", "provisioning_progress": null, "provisioning_state": ""'
  end
  local body = '{"' .. uuid .. '": {' .. inner .. '}}'
  return wrk.format("PATCH", "/device/v3/state",
    { ["Authorization"] = "Bearer " .. keys[i], ["Content-Type"] = "application/json" }, body)
end
