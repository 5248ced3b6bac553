-- How connections end and begin at the TCP level: a subscriber that leaves
-- is reset (no FIN/ACK exchange, no TIME_WAIT left on the client or the
-- proxy in front), a plain answer still ends with an orderly close, and a
-- connection that sends nothing does not take a slot (deferred accept).
local server = require "server"
local raw = require "raw"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
app:stream("/sub/:ch", function(req, s) s:subscribe(req.params.ch) end)
app:get("/hello", function() return 200, "hello\n" end)
return app
]]

-- TCP states of the sockets bound to local port `port` (/proc/net/tcp,
-- hex fields; 06 = TIME_WAIT).
local function states_of_local_port(port)
  local states = {}
  local f = assert(io.open("/proc/net/tcp", "r"))
  for line in f:lines() do
    local lport, st = line:match("^%s*%d+: %x+:(%x+) %x+:%x+ (%x+)")
    if lport and tonumber(lport, 16) == port then states[#states + 1] = st end
  end
  f:close()
  return states
end

local function open_stream(port, ch)
  local c = assert(raw.connect(port))
  assert(c:send(raw.request("GET", "/sub/" .. ch)))
  local r, err = c:read_response { method = "HEAD" }
  assert(r, "stream did not open: " .. tostring(err))
  assert.equal(200, r.status)
  return c
end

describe("connection close", function()
  local srv
  setup(function()
    srv = server.start { apps = { ["app.lua"] = APP }, args = { "--no-watch" } }
  end)
  teardown(function() srv:stop() end)

  it("resets a subscriber that closed, so its side keeps no TIME_WAIT", function()
    for i = 1, 5 do
      local c = open_stream(srv.port, "leave" .. i)
      local _, lport = c.sock:getsockname()
      lport = assert(tonumber(lport))
      c:close()   -- an orderly FIN from the client
      local gone = raw.eventually(function()
        return #states_of_local_port(lport) == 0 and true
      end, 3, 0.02)
      assert.is_true(gone, ("client port %d still has sockets in states %s"):format(
        lport, table.concat(states_of_local_port(lport), ",")))
    end
  end)

  it("ends a plain answer to a half-closed client with the whole body and a clean EOF", function()
    local c = assert(raw.connect(srv.port))
    assert(c:send(raw.request("GET", "/hello", { { "Connection", "close" } })))
    assert(c.sock:shutdown("send"))
    assert.is_true(c:wait_closed(3))
    assert.equal("closed", c.err)   -- not "connection reset by peer"
    assert.truthy(c.buf:find("^HTTP/1%.1 200"), c.buf)
    assert.truthy(c.buf:find("\r\n\r\nhello\n$"), c.buf)
  end)
end)

describe("connections that send nothing", function()
  local srv
  setup(function()
    srv = server.start { apps = { ["app.lua"] = APP }, args = { "--no-watch", "--max-conns", "1" } }
  end)
  teardown(function() srv:stop() end)

  it("do not take a slot before their first bytes arrive", function()
    local idle = {}
    for i = 1, 3 do idle[i] = assert(raw.connect(srv.port)) end
    -- with --max-conns 1, an accepted idle connection would leave no room
    local r, err, c = raw.exchange(srv.port, raw.request("GET", "/hello"))
    assert(r, tostring(err))
    assert.equal(200, r.status)
    c:close()
    -- and each is served once it speaks
    for _, i in ipairs(idle) do
      assert(i:send(raw.request("GET", "/hello", { { "Connection", "close" } })))
      local r2, err2 = i:read_response()
      assert(r2, tostring(err2))
      assert.equal(200, r2.status)
      i:close()
    end
  end)
end)
