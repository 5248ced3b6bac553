-- Scripts that cannot hurt the server: CPU budget, memory cap, and errors
-- in timers and per-event transforms stay with the script that made them.
local server = require "server"
local client = require "client"
local json = require "cjson"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
local stuck = 0
app:get("/spin", function(req) while true do end end)
app:get("/spin-caught", function(req)
  -- a script that catches the budget error cannot keep looping
  while true do pcall(function() while true do end end) end
end)
app:get("/hog", function(req)
  local t = {}
  for i = 1, 1000 do t[i] = string.rep("x", 4 * 1024 * 1024 + i) end
  return 200, "unreachable"
end)
app:get("/ok", function(req) return 200, "ok" end)
app:every(0.3, function() stuck = stuck + 1; while true do end end)
app:get("/stuck", function() return 200, tostring(stuck) end)
app:view("fragile", { transform = function(data) if data:find("boom") then error("cannot view this") end return data:upper() end })
app:stream("/fragile", function(req, s) s:subscribe("c", { view = "fragile" }) end)
app:stream("/raw", function(req, s) s:subscribe("c") end)
app:post("/pub", function(req) local id, n = sluice.publish("c", req.body) return 202, { n = n } end)
app:get("/memory", function() collectgarbage() return 200, { lua_memory = sluice.stats().lua_memory } end)
return app
]]

describe("script isolation", function()
  local srv
  setup(function()
    srv = server.start { apps = { ["app.lua"] = APP },
                         args = { "--lua-cpu-budget", "100", "--lua-memory", "64" } }
  end)
  teardown(function() srv:stop() end)

  it("stops a handler stuck in a loop with a 500 and a log line, and keeps serving", function()
    local r = client.request(srv.port, "GET", "/spin")
    assert.equal(500, r.status)
    assert.is_true(srv:wait_log("GET /spin: [^\n]*app%.lua:4: script exceeded its CPU budget of 100 ms", 2))
    assert.equal("ok", client.request(srv.port, "GET", "/ok").body)
  end)

  it("stops a loop even when the script catches the error", function()
    local r = client.request(srv.port, "GET", "/spin-caught")
    assert.equal(500, r.status)
    assert.equal("ok", client.request(srv.port, "GET", "/ok").body)
  end)

  it("stops a timer stuck in a loop, every time it fires", function()
    assert.is_true(srv:wait_log("timer: [^\n]*app%.lua:15: script exceeded its CPU budget", 3))
    local first = tonumber(client.request(srv.port, "GET", "/stuck").body)
    assert.is_true(first >= 1)
    assert.equal("ok", client.request(srv.port, "GET", "/ok").body)
  end)

  it("fails a memory-hungry handler alone, and the memory comes back", function()
    local r = client.request(srv.port, "GET", "/hog")
    assert.equal(500, r.status)
    assert.is_true(srv:wait_log("GET /hog: script exceeded the Lua memory limit of 64 MiB", 5))
    assert.equal("ok", client.request(srv.port, "GET", "/ok").body)
    local mem = json.decode(client.request(srv.port, "GET", "/memory").body).lua_memory
    assert.is_true(mem < 16 * 1024 * 1024, "Lua memory after the failure: " .. mem)
  end)

  it("drops an event only for the view whose transform failed", function()
    local fragile = client.stream(srv.port, "/fragile")
    local raw = client.stream(srv.port, "/raw")
    client.request(srv.port, "POST", "/pub", {}, "boom")
    client.request(srv.port, "POST", "/pub", {}, "fine")
    assert.equal("boom", raw:next_event(2).data)
    assert.equal("fine", raw:next_event(2).data)
    assert.equal("FINE", fragile:next_event(2).data)   -- "boom" was dropped for this view only
    assert.is_true(srv:wait_log("view [^\n]*fragile %(event dropped for this view%)[^\n]*cannot view this", 2))
    fragile:close()
    raw:close()
  end)
end)
