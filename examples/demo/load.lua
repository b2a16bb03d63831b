-- Mixed load for wrk against the demo (djscale cluster rollout/scale/autoscale):
-- three reads (GET /whoami: a replica) for each write (POST /visit: the primary).
-- DEMO_DELAY_MS (optional): pause of each connection between two requests, so that the
-- offered load is set by the number of connections (wrk -c) rather than by the servers.
-- DEMO_READ_PATH (optional): the read instead of /whoami (e.g. /wait?ms=40).
local delay_ms = tonumber(os.getenv("DEMO_DELAY_MS") or "0")
local read_path = os.getenv("DEMO_READ_PATH") or "/whoami"
local n = 0

request = function()
  n = n + 1
  if n % 4 == 0 then
    return wrk.format("POST", "/visit", { ["Content-Length"] = "0" }, "")
  end
  return wrk.format("GET", read_path)
end

if delay_ms > 0 then
  delay = function()
    return delay_ms
  end
end
