-- A publish either happens and the handler's answer says so, or does not
-- happen: the CPU a big publish takes in C (framing, fan-out) is not
-- charged to the script, so it is not stopped with a 500 right after its
-- event went out (a client that retries would publish it twice).
local server = require "server"
local client = require "client"
local json = require "cjson"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
app:post("/big", function(req)
  local id = sluice.publish("big", req.body)
  return 200, id
end)
app:get("/published", function() return tostring(sluice.stats().published) end)
return app
]]

describe("a big publish from a handler", function()
  local srv
  setup(function()
    srv = server.start { apps = { ["app.lua"] = APP },
                         args = { "--lua-cpu-budget", "30", "--lua-memory", "1024",
                                  "--max-body-bytes", tostring(80 * 1024 * 1024) } }
  end)
  teardown(function() srv:stop() end)

  it("answers success and is published once, or answers an error and is not published", function()
    local big = string.rep("xxxxxxx\n", 8 * 1024 * 1024)   -- 64 MiB of short lines
    for _ = 1, 3 do
      local before = tonumber(client.request(srv.port, "GET", "/published").body)
      local r = client.request(srv.port, "POST", "/big", nil, big)
      local after = tonumber(client.request(srv.port, "GET", "/published").body)
      if r.status == 200 then
        assert.equal(before + 1, after)
      else
        assert.equal(before, after, ("answered %d, yet the event was published"):format(r.status))
      end
    end
  end)
end)
