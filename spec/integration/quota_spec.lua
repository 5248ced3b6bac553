-- Route quotas: a cap on open streams and a token bucket of requests per
-- key, answered 429 with Retry-After past either, freed when streams end,
-- each key on its own, and the same whichever worker serves (the counts
-- are the process's).
local server = require "server"
local client = require "client"
local pinned = require "pinned"
local socket = require "socket"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/who", function() return 200, tostring(sluice.worker_id()) end)
app:stream("/feed", function(req, s) s:subscribe("feed") end,
           { quota = { key = "tenant:X-Tenant-ID", streams = 2 } })
app:stream("/byfn", function(req, s) s:subscribe("feed") end,
           { quota = { key = function(req) return req.query.t end, streams = 1, retry_after = 7 } })
app:get("/rated", function() return 200, "ok" end,
        { quota = { key = "header:X-Key", rate = { 2, per = 1 } } })
app:get("/spin", function() return 200, "never" end,
        { quota = { key = function(req) while true do end end, rate = { 5 } } })
app:post("/pub", function(req) sluice.publish("feed", req.body) return 204 end)
app:get("/stats", function()
  local st = sluice.stats()
  local out = { quota = st.quota, routes = {} }
  for _, r in ipairs(st.runtime.routes) do out.routes[r.pattern] = r.quota_refused end
  return 200, out
end)
return app
]]

local function get(port, path, headers)
  return client.request(port, "GET", path, headers)
end

local function stats(port)
  return require("cjson").decode(get(port, "/stats").body)
end

-- Retries fn until it returns true (bounded): the server notices a
-- closed stream when it reads the end of its connection.
local function eventually(fn, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  repeat
    if fn() then return true end
    socket.sleep(0.05)
  until socket.gettime() > deadline
  return false
end

describe("route quotas", function()
  local srv
  before_each(function()
    srv = server.start { apps = { ["app.lua"] = APP }, args = { "--no-watch" } }
  end)
  after_each(function() srv:stop() end)

  it("caps open streams per key with 429 and Retry-After, each key on its own, and frees a slot when a stream ends", function()
    local a1 = pinned.open(srv.port, nil, "/feed", { ["X-Tenant-ID"] = "acme" })
    local a2 = pinned.open(srv.port, nil, "/feed", { ["X-Tenant-ID"] = "acme" })
    assert.equal(200, a1.status)
    assert.equal(200, a2.status)
    local a3 = pinned.open(srv.port, nil, "/feed", { ["X-Tenant-ID"] = "acme" })
    assert.equal(429, a3.status)
    assert.equal("5", a3.headers["retry-after"])
    pinned.close(a3)
    -- Another tenant is not touched by acme's cap.
    local b1 = pinned.open(srv.port, nil, "/feed", { ["X-Tenant-ID"] = "globex" })
    assert.equal(200, b1.status)
    -- The open ones keep streaming.
    client.request(srv.port, "POST", "/pub", nil, "hello")
    assert.is_true(pinned.wait_text(a1, "data: hello"))
    assert.is_true(pinned.wait_text(b1, "data: hello"))
    -- One of acme's streams ends: its slot is free again.
    pinned.close(a1)
    local again
    assert.is_true(eventually(function()
      if again then pinned.close(again) end
      again = pinned.open(srv.port, nil, "/feed", { ["X-Tenant-ID"] = "acme" })
      return again.status == 200
    end))
    local st = stats(srv.port)
    assert.is_true(st.routes["/feed"].streams >= 1)
    assert.equal(2, st.quota.keys)
    assert.equal(3, st.quota.open)
    pinned.close(again); pinned.close(a2); pinned.close(b1)
    assert.is_true(eventually(function() return stats(srv.port).quota.open == 0 end))
  end)

  it("keys streams by what a key function returns, with the route's Retry-After", function()
    local x = pinned.open(srv.port, nil, "/byfn?t=x")
    assert.equal(200, x.status)
    local x2 = pinned.open(srv.port, nil, "/byfn?t=x")
    assert.equal(429, x2.status)
    assert.equal("7", x2.headers["retry-after"])
    local y = pinned.open(srv.port, nil, "/byfn?t=y")
    assert.equal(200, y.status)
    -- No key: the client's address is the key.
    local none = pinned.open(srv.port, nil, "/byfn")
    assert.equal(200, none.status)
    for _, s in ipairs { x, x2, y, none } do pinned.close(s) end
  end)

  it("rate-limits requests per key with a token bucket that refills", function()
    assert.equal(200, get(srv.port, "/rated", { ["X-Key"] = "k1" }).status)
    assert.equal(200, get(srv.port, "/rated", { ["X-Key"] = "k1" }).status)
    local r = get(srv.port, "/rated", { ["X-Key"] = "k1" })
    assert.equal(429, r.status)
    assert.equal("1", r.headers["retry-after"])   -- a token in 0.5 s: at least 1
    assert.equal(200, get(srv.port, "/rated", { ["X-Key"] = "k2" }).status)
    socket.sleep(0.6)   -- 2 per second: one token back
    assert.equal(200, get(srv.port, "/rated", { ["X-Key"] = "k1" }).status)
    assert.equal(429, get(srv.port, "/rated", { ["X-Key"] = "k1" }).status)
    local st = stats(srv.port)
    assert.equal(2, st.routes["/rated"].rate)
    assert.equal(2, st.quota.refused.rate)
  end)

  it("runs the key function under the CPU budget", function()
    local t0 = socket.gettime()
    assert.equal(500, get(srv.port, "/spin").status)
    assert.is_true(socket.gettime() - t0 < 3)
    assert.equal(200, get(srv.port, "/who").status)
  end)
end)

describe("route quotas with --workers 2", function()
  local srv
  before_each(function()
    srv = server.start { apps = { ["app.lua"] = APP }, args = { "--no-watch" }, workers = 2 }
  end)
  after_each(function() srv:stop() end)

  it("hold the cap for the whole process, whichever worker serves", function()
    local hdr = { ["X-Tenant-ID"] = "acme" }
    local on0 = pinned.open(srv.port, 0, "/feed", hdr)
    local on1 = pinned.open(srv.port, 1, "/feed", hdr)
    assert.equal(200, on0.status)
    assert.equal(200, on1.status)
    -- Full on both workers, though each holds only one.
    for wid = 0, 1 do
      local over = pinned.open(srv.port, wid, "/feed", hdr)
      assert.equal(429, over.status)
      assert.equal("5", over.headers["retry-after"])
      pinned.close(over)
    end
    -- A stream ends on worker 1: worker 0 may open one again.
    pinned.close(on1)
    local again
    assert.is_true(eventually(function()
      if again then pinned.close(again) end
      again = pinned.open(srv.port, 0, "/feed", hdr)
      return again.status == 200
    end))
    pinned.close(again); pinned.close(on0)
  end)
end)
