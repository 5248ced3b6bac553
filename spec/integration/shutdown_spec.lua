-- Graceful shutdown: on SIGTERM or SIGINT every open stream gets a retry
-- hint and ends cleanly (terminating chunk), idle keep-alive connections
-- close, and the process exits with status 0.
local server = require "server"
local raw = require "raw"
local socket = require "socket"
local sanitizer = require "sanitizer"

local ROOT = os.getenv("SLUICE_ROOT") or "."
local BIN = os.getenv("SLUICE_BIN") or (ROOT .. "/sluice")

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
app:get("/hello", function(req) return "hello" end)
app:get("/spin", function(req) while true do end end)
app:stream("/events", function(req, s) s:subscribe("main") end)
app:post("/pub", function(req)
  local _, n = sluice.publish("main", { event = "note", data = req.body })
  return 200, tostring(n)
end)
return app
]]

local read_file = server.read_file

local alive = server.alive

-- Starts sluice under `sh -c '...; echo $? > code'` so the exit status is
-- recorded; the process id comes from --pid-file.
local function start(args)
  local dir = server.tmpdir()
  local apps = dir .. "/apps"
  os.execute("mkdir -p " .. apps)
  server.write_file(apps .. "/app.lua", APP)
  local p = {
    dir = dir, log_path = dir .. "/sluice.log", code_path = dir .. "/code",
    pid_path = dir .. "/sluice.pid",
  }
  local inner = ("%s --listen 127.0.0.1:0 --apps %s --lua-path %s/lua --pid-file %s --no-watch %s >%s 2>&1; echo $? >%s")
    :format(BIN, apps, ROOT, p.pid_path, table.concat(args or {}, " "), p.log_path, p.code_path)
  os.execute(("sh -c '%s' </dev/null >/dev/null 2>&1 &"):format(inner))
  local deadline = socket.gettime() + 10
  while socket.gettime() < deadline do
    local port = (read_file(p.log_path) or ""):match("listening on 127%.0%.0%.1:(%d+)")
    local pid = tonumber((read_file(p.pid_path) or ""):match("%d+"))
    if port and pid then
      p.port, p.pid = tonumber(port), pid
      return p
    end
    if read_file(p.code_path) then break end
    socket.sleep(0.02)
  end
  local log = read_file(p.log_path) or ""
  os.execute("rm -rf " .. dir)
  error("sluice did not start:\n" .. log)
end

-- The recorded exit status once the process is gone (bounded wait).
local function exit_code(p, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  while socket.gettime() < deadline do
    local code = read_file(p.code_path)
    if code and code:match("%d") then return tonumber(code:match("%d+")) end
    socket.sleep(0.02)
  end
  return nil
end

-- Kills what is left and removes the directory, unless the server
-- reported a sanitizer error (make asan): then its log is kept and the
-- spec fails.
local function cleanup(p)
  if not p then return end
  if p.pid and alive(p.pid) then
    os.execute(("kill -KILL %d 2>/dev/null"):format(p.pid))
    exit_code(p, 2)
  end
  local report = sanitizer.check_server(p.pid, read_file(p.log_path), p.log_path)
  if report then error(report) end
  os.execute("rm -rf " .. p.dir)
end

-- Splits a raw response into head and de-chunked body; complete is true
-- only when the terminating chunk ends it with nothing after.
local function dechunk(bytes)
  local e = bytes:find("\r\n\r\n", 1, true)
  if not e then return nil, nil, false end
  local head, rest = bytes:sub(1, e + 3), bytes:sub(e + 4)
  local body = {}
  local pos = 1
  while true do
    local ls, le, hex = rest:find("^(%x+)\r\n", pos)
    if not ls then return head, table.concat(body), false end
    local size = tonumber(hex, 16)
    if size == 0 then
      return head, table.concat(body), rest:sub(le + 1) == "\r\n"
    end
    local data = rest:sub(le + 1, le + size)
    if #data < size or rest:sub(le + size + 1, le + size + 2) ~= "\r\n" then
      return head, table.concat(body), false
    end
    body[#body + 1] = data
    pos = le + size + 3
  end
end

local function open_stream(port, http10)
  local c = assert(raw.connect(port))
  assert(c:send(("GET /events HTTP/%s\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n")
    :format(http10 and "1.0" or "1.1")))
  assert(c:wait_for("retry: 1500\n\n", 3), "the stream did not open: " .. c.buf)
  return c
end

local function shutdown_with(sig)
  local p
  after_each(function() cleanup(p); p = nil end)

  it(("ends streams with a retry hint, closes idle connections, exits 0 on %s"):format(sig), function()
    p = start { "--retry", "1500", "--heartbeat", "30", "--shutdown-grace", "5" }
    local streams = {}
    for i = 1, 3 do streams[i] = open_stream(p.port) end
    local old = open_stream(p.port, true)   -- HTTP/1.0: not chunked
    -- one event in flight on every stream before the signal
    local r = assert(raw.exchange(p.port, raw.request("POST", "/pub", nil, "last words")))
    assert.equal("4", r.body)
    local idle = {}
    for i = 1, 2 do
      local c = assert(raw.connect(p.port))
      assert(c:send(raw.request("GET", "/hello")))
      local a = assert(c:read_response())
      assert.equal(200, a.status)
      idle[i] = c
    end

    os.execute(("kill -%s %d"):format(sig, p.pid))

    for i, c in ipairs(streams) do
      assert.is_true(c:wait_closed(5), ("stream %d was not closed"):format(i))
      local head, body, complete = dechunk(c.buf)
      assert.matches("^HTTP/1%.1 200", head)
      assert.is_true(complete, ("stream %d did not end with the terminating chunk: %q"):format(i, c.buf))
      assert.matches("data: last words\n\n", body, 1, true)
      -- the last event of the stream carries the reconnect hint
      local blocks = {}
      for block in body:gmatch("(.-\n)\n") do blocks[#blocks + 1] = block end
      assert.is_true(#blocks >= 3, body)   -- opening hint, the event, the goodbye
      assert.matches("retry: 1500\n", blocks[#blocks], 1, true)
      assert.is_nil(blocks[#blocks]:find("data:", 1, true))
      c:close()
    end

    assert.is_true(old:wait_closed(5), "the HTTP/1.0 stream was not closed")
    assert.matches("data: last words\n\n", old.buf, 1, true)
    assert.matches("data: last words\n\n[^\n]*\n?retry: 1500\n\n$", old.buf)
    assert.is_nil(old.buf:find("0\r\n\r\n", 1, true), "chunk framing on an HTTP/1.0 stream")
    old:close()

    for i, c in ipairs(idle) do
      assert.is_true(c:wait_closed(5), ("idle keep-alive connection %d was not closed"):format(i))
      assert.equal("", c.buf)
      c:close()
    end

    local code = exit_code(p, 5)
    assert.is_truthy(code, "the process did not exit; log:\n" .. (read_file(p.log_path) or ""))
    assert.equal(0, code)
    assert.is_false(alive(p.pid))
    assert.is_nil(read_file(p.pid_path), "the pid file was left behind")
  end)
end

describe("SIGTERM while the event loop is stuck", function()
  local p
  after_each(function() cleanup(p); p = nil end)

  -- A handler that never returns, with the CPU budget off: the loop never
  -- turns again, so a SIGTERM handled by the loop alone was never seen.
  for _, sig in ipairs { "TERM", "INT" } do
    it(("ends the process within --shutdown-grace plus a margin (SIG%s)"):format(sig), function()
      p = start { "--lua-cpu-budget", "0", "--shutdown-grace", "1" }
      local c = assert(raw.connect(p.port))
      assert(c:send(raw.request("GET", "/spin")))
      socket.sleep(0.3)   -- the handler is spinning now
      local t0 = socket.gettime()
      os.execute(("kill -%s %d"):format(sig, p.pid))
      local code = exit_code(p, 6)
      local took = socket.gettime() - t0
      assert.is_truthy(code, "the process ignored SIG" .. sig .. " for 6 s (grace 1 s); log:\n" ..
                       (read_file(p.log_path) or ""))
      -- grace 1 s + 1 s margin; generous for a loaded machine
      assert.is_true(took < 3.5, ("exit took %.1f s"):format(took))
      assert.is_true(took > 1.5, ("exit after %.1f s: the grace period was not given"):format(took))
      assert.are_not.equal(0, code, "a forced exit must not look like a clean one")
      assert.matches("shutdown did not finish within %-%-shutdown%-grace", read_file(p.log_path) or "")
      assert.is_nil(read_file(p.pid_path), "the pid file was left behind")
      c:close()
    end)
  end
end)

describe("graceful shutdown", function()
  describe("SIGTERM", function() shutdown_with("TERM") end)
  describe("SIGINT", function() shutdown_with("INT") end)

  describe("with a connection stuck mid-request", function()
    local p
    after_each(function() cleanup(p); p = nil end)

    it("exits 0 once the grace period is over", function()
      p = start { "--shutdown-grace", "0.5", "--header-timeout", "30" }
      local c = assert(raw.connect(p.port))
      assert(c:send("GET /hello HTTP/1.1\r\nHost: a\r\nX-Half: "))
      socket.sleep(0.1)
      os.execute(("kill -TERM %d"):format(p.pid))
      local code = exit_code(p, 5)
      assert.is_truthy(code, "the process did not exit within 5 s (grace 0.5 s)")
      assert.equal(0, code)
      assert.is_true(c:wait_closed(2))
      c:close()
    end)

    it("does not serve new connections once shutting down", function()
      p = start { "--shutdown-grace", "1", "--header-timeout", "30" }
      -- a half-sent request keeps the process in its grace period
      local stuck = assert(raw.connect(p.port))
      assert(stuck:send("GET /hello HTTP/1.1\r\nHost: a\r\nX-Half: "))
      socket.sleep(0.1)
      os.execute(("kill -TERM %d"):format(p.pid))
      socket.sleep(0.1)
      assert.is_true(alive(p.pid), "the process should still be in its grace period")
      local c = raw.connect(p.port)
      if c then
        c:send(raw.request("GET", "/hello"))
        local r = c:read_response { timeout = 0.5 }
        assert.is_true(r == nil or r.status == 503,
          "a new connection was served during shutdown: " .. tostring(r and r.status))
        c:close()
      end
      assert.equal(0, exit_code(p, 5))
      stuck:close()
    end)
  end)
end)
