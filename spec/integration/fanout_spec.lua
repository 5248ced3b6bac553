-- Fan-out on the real binary: 1,000 subscribers of one channel, 1,000
-- events published through pipelined POSTs; every subscriber gets every
-- event once, in publish order, with the ids the publishes returned.
--
-- Reading strategy: the streams are read one after another once all the
-- events are published. 1,000 events of ~40 bytes framed are ~40 KB per
-- subscriber, which the kernel socket buffers (loopback tcp_rmem starts
-- at 128 KiB) plus the server's per-connection queue (1 MiB by default)
-- hold without the server judging anybody slow; socket.select cannot be
-- used anyway (descriptors past 1024).
local multi = require "multi"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()

app:stream("/fan/:ch", function(req, s) s:subscribe(req.params.ch) end)

-- one event per request, its data the request body
app:post("/pub/:ch", function(req)
  local id, n = sluice.publish(req.params.ch, { data = req.body })
  return 200, { id = id, subscribers = n }
end)

app:get("/stats", function()
  local st = sluice.stats()
  st.runtime = nil
  return 200, st
end)

return app
]]

local SUBSCRIBERS = 1000
local EVENTS = 1000

describe("fan-out to 1,000 subscribers", function()
  local srv, streams

  setup(function()
    srv = multi.start { apps = { ["app.lua"] = APP }, args = { "--heartbeat 0" } }
  end)
  teardown(function()
    for _, s in ipairs(streams or {}) do pcall(s.close, s) end
    srv:stop()
  end)

  it("delivers 1,000 events to each of 1,000 subscribers, in order, none missing or doubled", function()
    -- Open the streams: send every request first, then read the heads,
    -- so the connects do not wait on each other's round trips.
    streams = {}
    for i = 1, SUBSCRIBERS do
      streams[i] = multi.open(srv.port, "/fan/news", nil, { no_head = true, timeout = 10 })
    end
    for i = 1, SUBSCRIBERS do
      streams[i]:finish_open(10)
      assert.equal(200, streams[i].status, "stream " .. i)
    end
    -- A stream's head is queued after it subscribed, so all are subscribed.
    local st = multi.get_json(srv.port, "/stats")
    assert.equal(SUBSCRIBERS, st.subscriptions)

    -- Publish 1,000 events through pipelined requests on one connection.
    local reqs = {}
    for i = 1, EVENTS do reqs[i] = { "POST", "/pub/news", tostring(i) } end
    local answers = multi.pipeline(srv.port, reqs, 30)
    local want, prev = {}, 0
    for i, r in ipairs(answers) do
      assert.equal(200, r.status)
      local a = multi.json(r.body)
      -- every publish reached every subscriber
      if a.subscribers ~= SUBSCRIBERS then
        error(("publish %d reached %s subscribers, expected %d"):format(i, tostring(a.subscribers), SUBSCRIBERS))
      end
      local id = tonumber(a.id)
      assert.is_true(id > prev, "ids grow: publish " .. i .. " got " .. a.id .. " after " .. prev)
      prev = id
      want[i] = { id = a.id, data = tostring(i) }
    end

    -- Read every stream; remember the first problem of each bad one.
    local bad, first_problem = 0, nil
    for i, s in ipairs(streams) do
      local got = s:take(EVENTS, 10)
      local problem = multi.diff_events(got, want, "subscriber " .. i)
      if not problem and s:pending() > 0 then
        problem = ("subscriber %d: %d events beyond the %d published"):format(i, s:pending(), EVENTS)
      end
      if problem then
        bad = bad + 1
        first_problem = first_problem or problem
      end
    end
    assert.is_nil(first_problem, ("%d of %d subscribers got a wrong sequence; first: %s")
      :format(bad, SUBSCRIBERS, tostring(first_problem)))

    -- Nothing beyond the 1,000 events arrives (a sample; all are empty now).
    for i = 1, SUBSCRIBERS, 97 do
      assert.is_nil(streams[i]:next(0.01), "subscriber " .. i .. " got an extra event")
    end
    local st2 = multi.get_json(srv.port, "/stats")
    assert.equal(0, st2.slow_closed)
    assert.equal(0, st2.slow_gapped)
  end)

  it("counts only the subscribers left after half of them hang up", function()
    assert.equal(SUBSCRIBERS, #streams, "needs the streams of the previous test")
    for i = 1, SUBSCRIBERS, 2 do streams[i]:close() end
    local left = SUBSCRIBERS / 2
    local st = multi.wait_for(function()
      local s = multi.get_json(srv.port, "/stats")
      return s.subscriptions == left and s
    end, 10)
    assert.is_truthy(st, "subscriptions did not drop to " .. left)

    local r = multi.request(srv.port, "POST", "/pub/news", "after")
    local a = multi.json(r.body)
    assert.equal(left, a.subscribers)
    for i = 2, SUBSCRIBERS, 2 do
      local ev = streams[i]:next(5)
      assert.is_truthy(ev, "subscriber " .. i .. " got nothing")
      assert.same({ a.id, "after" }, { ev.id, ev.data })
    end

    for i = 2, SUBSCRIBERS, 2 do streams[i]:close() end
    local st2 = multi.wait_for(function()
      local s = multi.get_json(srv.port, "/stats")
      return s.subscriptions == 0 and s.connections <= 1 and s
    end, 10)
    assert.is_truthy(st2, "streams were not released after every client hung up")
  end)
end)
