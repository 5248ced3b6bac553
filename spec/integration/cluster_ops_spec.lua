-- Cluster mode (--redis) as operators see it: readiness follows Redis,
-- app timers run once per service. Each describe starts its own
-- redis-server (spec/helpers/redis.lua).
local server = require "server"
local redis = require "redis"
local raw = require "raw"
local http = require "sluice.testing.http"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
app:stream("/s", function(req, s) s:subscribe(req.query.ch or "a") end)
return app
]]

local function admin_get(port, path)
  return http.request("127.0.0.1", port, { method = "GET", path = path, timeout = 5 })
end

describe("#cluster readiness", function()
  if not redis.available() then
    pending("redis-server is not installed (make deps)")
    return
  end
  local r, srv
  teardown(function()
    if srv then srv:stop() end
    if r then r:stop() end
  end)

  it("/readyz says 503 while Redis is unreachable and 200 once it is back", function()
    r = redis.start()
    srv = server.start { apps = { ["app.lua"] = APP },
                         args = { "--no-watch", "--admin-listen", "127.0.0.1:0",
                                  "--redis", r:url(), "--redis-prefix", "o" .. r.port .. ":" } }
    assert(srv:wait_log("admin endpoints at 127%.0%.0%.1:%d+"), srv:log())
    local port = tonumber(srv:log():match("admin endpoints at 127%.0%.0%.1:(%d+)"))
    assert.truthy(raw.eventually(function() return admin_get(port, "/readyz").status == 200 end, 10),
                  "never ready with Redis up")
    r:kill()
    local down = raw.eventually(function()
      local x = admin_get(port, "/readyz")
      return x.status == 503 and x
    end, 10)
    assert.truthy(down, "still ready with Redis gone")
    assert.equal("cluster not reachable\n", down.body)
    r:start()
    assert.truthy(raw.eventually(function() return admin_get(port, "/readyz").status == 200 end, 10),
                  "not ready again after Redis came back")
  end)
end)
