-- How connections end and begin at the TCP level: a subscriber that leaves
-- is reset (no FIN/ACK exchange, no TIME_WAIT left on the client or the
-- proxy in front), a plain answer still ends with an orderly close, and a
-- connection that says nothing takes no slot during its first second
-- (deferred accept).
local server = require "server"
local raw = require "raw"
local socket = require "socket"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
app:stream("/sub/:ch", function(req, s) s:subscribe(req.params.ch) end)
app:get("/hello", function() return 200, "hello\n" end)
return app
]]

-- TCP states (/proc/net/tcp, hex; 06 = TIME_WAIT) of the sockets from
-- 127.0.0.1:from_port to 127.0.0.1:to_port: this exact connection only.
local function states_of(from_port, to_port)
  local states = {}
  local want = ("0100007F:%04X 0100007F:%04X"):format(from_port, to_port)
  local f = assert(io.open("/proc/net/tcp", "r"))
  for line in f:lines() do
    local pair, st = line:match("^%s*%d+: (%x+:%x+ %x+:%x+) (%x+)")
    if pair == want then states[#states + 1] = st end
  end
  f:close()
  return states
end

-- How the server ended the connection, read at the socket: "eof" (FIN)
-- or "reset" (RST), with the bytes before it. luasocket reports both as
-- "closed", so this reads with recv(2) and errno through the FFI.
local ffi = require "ffi"
pcall(ffi.cdef, "long recv(int fd, void *buf, unsigned long len, int flags);")
local ECONNRESET, EAGAIN = 104, 11
local function how_it_ends(c, timeout)
  local buf = ffi.new("char[?]", 65536)
  local got = { c.buf }
  local deadline = socket.gettime() + (timeout or 3)
  while socket.gettime() < deadline do
    socket.select({ c.sock }, nil, 0.1)
    local n = tonumber(ffi.C.recv(c.sock:getfd(), buf, 65536, 0x40))   -- MSG_DONTWAIT
    if n > 0 then
      got[#got + 1] = ffi.string(buf, n)
    elseif n == 0 then
      return "eof", table.concat(got)
    else
      local e = ffi.errno()
      if e == ECONNRESET then return "reset", table.concat(got) end
      if e ~= EAGAIN then return "errno " .. e, table.concat(got) end
    end
  end
  return "still open", table.concat(got)
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
        return #states_of(lport, srv.port) == 0
      end, 3, 0.02)
      assert.is_true(gone, ("the closed subscriber's socket is still in state %s"):format(
        table.concat(states_of(lport, srv.port), ",")))
    end
  end)

  it("answers a subscriber's FIN with a reset", function()
    local c = open_stream(srv.port, "halfclosed")
    assert(c.sock:shutdown("send"))
    assert.equal("reset", (how_it_ends(c)))
    c:close()
  end)

  it("ends a plain answer to a half-closed client with the whole body and a clean EOF", function()
    local c = assert(raw.connect(srv.port))
    -- keep-alive: the server answers, then reads the FIN while waiting for
    -- a next request, and closes
    assert(c:send(raw.request("GET", "/hello")))
    assert(c.sock:shutdown("send"))
    local ending, bytes = how_it_ends(c)
    c:close()
    assert.equal("eof", ending)
    assert.truthy(bytes:find("^HTTP/1%.1 200"), bytes)
    assert.truthy(bytes:find("\r\n\r\nhello\n$"), bytes)
  end)
end)

describe("connections that send nothing", function()
  local srv
  setup(function()
    srv = server.start { apps = { ["app.lua"] = APP }, args = { "--no-watch", "--max-conns", "1" } }
  end)
  teardown(function() srv:stop() end)

  it("take no slot during their first second", function()
    local t0 = socket.gettime()
    local idle = {}
    for i = 1, 3 do idle[i] = assert(raw.connect(srv.port)) end
    -- with --max-conns 1, an accepted idle connection would leave no room
    local r, err, c = raw.exchange(srv.port, raw.request("GET", "/hello", { { "Connection", "close" } }))
    assert(r, tostring(err))
    -- the server frees the slot before its FIN reaches us
    assert.is_true(c:wait_closed(2))
    c:close()
    if socket.gettime() - t0 > 0.8 then
      pending("machine too slow: the idle connections may have been accepted meanwhile")
      return
    end
    assert.equal(200, r.status)
    -- and each is served once it speaks
    for _, i in ipairs(idle) do
      assert(i:send(raw.request("GET", "/hello", { { "Connection", "close" } })))
      local r2, err2 = i:read_response()
      assert(r2, tostring(err2))
      assert.equal(200, r2.status)
      i:close()
    end
  end)

  it("refuse a client past --max-conns with a 503 that ends in an orderly close", function()
    local held = open_stream(srv.port, "hold")   -- takes the only slot
    local c = assert(raw.connect(srv.port))
    assert(c:send(raw.request("GET", "/hello")))
    -- closing with the request unread would reset, and some clients then
    -- drop the 503 they were sent
    local ending, bytes = how_it_ends(c)
    c:close()
    held:close()
    assert.truthy(bytes:find("^HTTP/1%.1 503"), bytes)
    assert.equal("eof", ending)
  end)
end)
