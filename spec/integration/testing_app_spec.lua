-- The in-process mode's own specs: the clock and timers, env values,
-- reload, the app's log, and one app at a time.
local testing = require "sluice.testing"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
local order = {}
app:every(2, function() order[#order + 1] = "every2@" .. os.time() end)
sluice.after(3, function() order[#order + 1] = "after3" end)
app:get("/order", function() return 200, table.concat(order, ",") end)
app:get("/env", function() return 200, sluice.env("GREETING", "none") end)
app:get("/boom", function() error("kaboom") end)
app:stream("/s", function(req, s)
  s:after(1, function() s:send { event = "late", data = "1s" } end)
  s:every(5, function() s:send { event = "five", data = tostring(sluice.now()) } end)
end)
return app
]]

describe("testing.app", function()
  local app
  after_each(function() if app then app:close() end end)

  it("fires app and stream timers at their time, in order, only when the clock moves", function()
    app = testing.app { apps = { ["t.lua"] = APP }, clock = 1000 }
    assert.equal(1000, app:now())
    local s = app:stream("/s")
    assert.equal("", app:get("/order").body)
    assert.equal(3, app:advance(3))   -- every2 at 1002, stream's after at 1001, after3 at 1003
    assert.equal("every2@1002,after3", app:get("/order").body)
    assert.equal("late", assert(s:next()).event)
    assert.equal(1003, app:now())
    app:advance(2)
    local ev = assert(s:next())
    assert.same({ "five", "1005" }, { ev.event, ev.data })
    s:close()
    app:advance(10)   -- the stream's timers went with it
    assert.is_nil(s:next())
  end)

  it("gives the app the environment values of the test", function()
    app = testing.app { apps = { ["t.lua"] = APP }, env = { GREETING = "hello" } }
    assert.equal("hello", app:get("/env").body)
  end)

  it("answers a script error with a 500 and keeps the error in its log", function()
    app = testing.app { apps = { ["t.lua"] = APP } }
    assert.equal(500, app:get("/boom").status)
    assert.truthy(app:log():find("kaboom", 1, true))
  end)

  it("reloads a changed script", function()
    app = testing.app { apps = { ["t.lua"] = APP } }
    app:write_app("t.lua", APP:gsub('"none"', '"changed"'))
    app:reload()
    assert.equal("changed", app:get("/env").body)
  end)

  it("runs one app at a time: a new one closes the last", function()
    local first = testing.app { apps = { ["t.lua"] = APP } }
    app = testing.app { apps = { ["t.lua"] = APP } }
    assert.has_error(function() first:get("/env") end)
    assert.equal(200, app:get("/env").status)
  end)

  it("answers bad requests as the server does", function()
    app = testing.app { apps = { ["t.lua"] = APP } }
    assert.equal(404, app:get("/nope").status)
    assert.equal(405, app:request { method = "DELETE", path = "/env" }.status)
    assert.equal(413, app:request { method = "POST", path = "/env", body = ("x"):rep(2 * 1024 * 1024) }.status)
  end)
end)
