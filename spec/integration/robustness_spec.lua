-- Regression specs for what the code review found: scripts and clients
-- that used to crash, hang or bloat the server.
local server = require "server"
local client = require "client"
local socket = require "socket"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
local victim
app:view("closer", { transform = function(data) if victim then victim:close() end return data end })
app:stream("/victim", function(req, s) victim = s; s:subscribe("v", { view = "closer" }) end)
app:post("/pub/:ch", function(req) local id, n = sluice.publish(req.params.ch, req.body) return 202, tostring(n) end)

app:get("/timer", function(req)
  local v = ({ nan = 0 / 0, inf = 1 / 0, neg = -1 })[req.query.v]
  sluice.after(v, function() end)
  return 200, "armed"
end)
app:stream("/tiny-heartbeat", function(req, s) s:heartbeat(1e-12) end)
app:get("/load-loop", function() local f = load("local n = 0 while true do n = n + 1 end") f() end)
app:stream("/twice", function(req, s)
  s:subscribe("t")
  s:after(0.05, function() s:subscribe("t") end)
end)
local big = string.rep("x", 1000000)
app:get("/big", function() return 200, big end)
app:get("/ok", function() return 200, "ok" end)
app:get("/", function(req) return 200, req.query.x or "no query" end)
return app
]]

describe("robustness", function()
  local srv
  setup(function()
    srv = server.start { apps = { ["app.lua"] = APP }, args = { "--send-timeout", "1" } }
  end)
  teardown(function() srv:stop() end)

  local function ok()
    return client.request(srv.port, "GET", "/ok").body == "ok"
  end

  it("keeps the query of an absolute-form target without a path", function()
    local c = client.connect(srv.port)
    assert(c:send("GET http://127.0.0.1?x=42 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
    local r = client.read_response(c)
    c:close()
    assert.equal(200, r.status)
    assert.equal("42", r.body)
  end)

  it("survives a view transform that closes a stream in the middle of a fan-out", function()
    local s = client.stream(srv.port, "/victim")
    local r = client.request(srv.port, "POST", "/pub/v", {}, "x")
    assert.equal(202, r.status)
    assert.is_true(srv:running())
    assert.is_true(ok())
    s:close()
  end)

  it("refuses NaN, infinite and negative timer intervals instead of aborting", function()
    for _, v in ipairs { "nan", "inf", "neg" } do
      assert.equal(500, client.request(srv.port, "GET", "/timer?v=" .. v).status)
    end
    assert.is_true(srv:running())
    assert.is_true(ok())
  end)

  it("refuses a heartbeat interval too small to be real", function()
    assert.equal(500, client.request(srv.port, "GET", "/tiny-heartbeat").status)
    assert.is_true(ok())
  end)

  it("stops a loop in code the script compiled with load()", function()
    assert.equal(500, client.request(srv.port, "GET", "/load-loop").status)
    assert.is_true(srv:wait_log("script exceeded its CPU budget", 2))
    assert.is_true(ok())
  end)

  it("does not deliver an event twice to a stream that subscribes twice", function()
    local s = client.stream(srv.port, "/twice")
    socket.sleep(0.2)
    local r = client.request(srv.port, "POST", "/pub/t", {}, "once")
    assert.equal("1", r.body)
    assert.equal("once", s:next_event(2).data)
    assert.is_nil(s:next_event(0.3))
    s:close()
  end)

  it("keeps memory bounded when pipelined answers are not read", function()
    local before = srv:rss_kib()
    local c = client.connect(srv.port)
    c:setoption("tcp-nodelay", true)
    -- 1000 requests for 1 MB each, and no reading: at most about
    -- --max-queued-bytes (1 MiB) plus one answer may be held for them.
    assert(c:send(string.rep("GET /big HTTP/1.1\r\nHost: x\r\n\r\n", 1000)))
    socket.sleep(1)
    local grown = srv:rss_kib() - before
    assert.is_true(grown < 64 * 1024, ("RSS grew by %d KiB"):format(grown))
    c:close()
  end)

  it("disconnects a client that stops reading after --send-timeout", function()
    local c = client.connect(srv.port)
    -- 20 MB of answers and no reading: loopback socket buffers take a few
    -- MB, then the server's writes stop making progress
    assert(c:send(string.rep("GET /big HTTP/1.1\r\nHost: x\r\n\r\n", 20)))
    socket.sleep(2.5)
    local fds_alive = srv:running()
    c:settimeout(5)
    local got, total = 0, 0
    repeat
      local data, err, partial = c:receive(65536)
      local n = #(data or partial or "")
      total = total + n
      got = got + 1
    until err == "closed" or got > 2000
    c:close()
    assert.is_true(fds_alive)
    assert.is_true(total < 20 * 1000000, "every answer arrived: the connection was not cut")
    assert.is_true(total > 0)
  end)
end)
