-- Clients that vanish: a closed or reset SSE connection must cost nothing
-- afterwards: no descriptor, no subscription, no timer, and the stream's
-- on_close runs.
local server = require "server"
local raw = require "raw"
local client = require "client"
local json = require "cjson"
local socket = require "socket"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()

local counters = { opened = 0, ticks = 0, closed = 0 }

app:stream("/sub/:ch", function(req, s)
  s:subscribe(req.params.ch)
end)

app:stream("/timed", function(req, s)
  counters.opened = counters.opened + 1
  s:subscribe("timed")
  s:every(0.05, function()
    counters.ticks = counters.ticks + 1
    s:send { event = "tick", data = tostring(counters.ticks) }
  end)
  s:on_close(function() counters.closed = counters.closed + 1 end)
end)

app:get("/counters", function() return counters end)

app:post("/pub/:ch", function(req)
  local id, n = sluice.publish(req.params.ch, req.body)
  return 200, { id = id, subscribers = n }
end)

app:get("/stats", function()
  local s = sluice.stats()
  return { connections = s.connections, subscriptions = s.subscriptions }
end)

return app
]]

local BATCHES, PER_BATCH = 10, 100

describe("clients that vanish", function()
  local srv

  setup(function()
    srv = server.start { apps = { ["app.lua"] = APP }, args = { "--no-watch", "--heartbeat", "0.2" } }
  end)
  teardown(function() srv:stop() end)

  local function get_json(path)
    local r = client.request(srv.port, "GET", path)
    assert.equal(200, r.status)
    return json.decode(r.body)
  end

  local function publish(ch)
    local r = client.request(srv.port, "POST", "/pub/" .. ch, {}, "x")
    assert.equal(200, r.status)
    return json.decode(r.body).subscribers
  end

  local function fd_baseline()
    -- settle: the connection of the last request may still be closing
    local last
    raw.eventually(function()
      local n = srv:fd_count()
      local same = n == last
      last = n
      return same
    end, 3, 0.1)
    return last
  end

  it("1000 subscribers closing or resetting leave no descriptor and no subscription", function()
    assert.equal(0, publish("vanish"))
    local baseline = fd_baseline()
    assert.truthy(baseline and baseline > 0, "cannot read the server's descriptors")

    for batch = 1, BATCHES do
      local conns = {}
      for i = 1, PER_BATCH do
        local c, err = raw.connect(srv.port)
        assert(c, ("batch %d, client %d: %s"):format(batch, i, tostring(err)))
        assert(c:send("GET /sub/vanish HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n"))
        conns[i] = c
      end
      -- all of them subscribed (bounded wait), without reading a byte
      local n = raw.eventually(function()
        local k = publish("vanish")
        return k >= PER_BATCH and k
      end, 5)
      assert.is_truthy(n, ("batch %d: the streams did not all subscribe"):format(batch))
      -- then gone, three ways
      for i, c in ipairs(conns) do
        local how = i % 3
        if how == 0 then
          c:reset()                       -- SO_LINGER 0: RST
        elseif how == 1 then
          c:close()                       -- unread data: the kernel resets
        else
          c:wait_for("retry:", 1)         -- read what came, then FIN
          c.buf = ""
          c:fill(0.001)
          c:close()
        end
      end
    end

    local ok = raw.eventually(function() return srv:fd_count() == baseline end, 10, 0.1)
    assert.is_true(ok, ("descriptors did not return to %d (now %s)"):format(baseline, tostring(srv:fd_count())))
    assert.equal(0, publish("vanish"))
    local stats = get_json("/stats")
    assert.equal(0, stats.subscriptions)
    assert.is_true(stats.connections <= 1, "connections left: " .. tostring(stats.connections))
    -- and the server still serves, streams included
    local s = client.stream(srv.port, "/sub/after")
    assert.equal(200, s.status)
    assert.equal(1, publish("after"))
    local ev = s:next_event(2)
    assert.is_truthy(ev)
    assert.equal("x", ev.data)
    s:close()
    assert.is_true(srv:running())
  end)

  local function vanish_stops_timer(how)
    local before = get_json("/counters")
    local s = client.stream(srv.port, "/timed")
    assert.equal(200, s.status)
    local ev = s:next_event(2)
    assert.is_truthy(ev, "no tick from the stream timer")
    assert.equal("tick", ev.event)
    if how == "reset" then s.sock:setoption("linger", { on = true, timeout = 0 }) end
    s:close()

    local after = raw.eventually(function()
      local c = get_json("/counters")
      return c.closed > before.closed and c
    end, 3)
    assert.is_truthy(after, "on_close did not run after the client vanished")
    assert.equal(before.closed + 1, after.closed)
    -- the timer is stopped: the tick count stays put over many periods
    socket.sleep(0.3)
    local later = get_json("/counters")
    assert.equal(after.ticks, later.ticks, "the stream's timer still runs after it closed")
    assert.equal(0, publish("timed"))
  end

  it("stops a stream's timer and runs its on_close when the client closes", function()
    vanish_stops_timer("close")
  end)

  it("stops a stream's timer and runs its on_close when the client resets", function()
    vanish_stops_timer("reset")
  end)

  it("runs on_close once per stream for many vanishing streams", function()
    local before = get_json("/counters")
    local conns = {}
    for i = 1, 50 do
      local c = assert(raw.connect(srv.port))
      assert(c:send("GET /timed HTTP/1.1\r\nHost: a\r\n\r\n"))
      conns[i] = c
    end
    local opened = raw.eventually(function()
      return get_json("/counters").opened >= before.opened + 50
    end, 5)
    assert.is_true(opened, "the streams did not all open")
    for i, c in ipairs(conns) do
      if i % 2 == 0 then c:reset() else c:close() end
    end
    local closed = raw.eventually(function()
      return get_json("/counters").closed == before.closed + 50
    end, 5)
    assert.is_true(closed, ("on_close ran %d times for 50 streams")
      :format(get_json("/counters").closed - before.closed))
    local t1 = get_json("/counters").ticks
    socket.sleep(0.3)
    assert.equal(t1, get_json("/counters").ticks, "timers of vanished streams still run")
  end)
end)
