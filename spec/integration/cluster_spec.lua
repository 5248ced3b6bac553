-- Several nodes as one service through Redis (--redis): a real
-- redis-server on a free loopback port, started and stopped here, and two
-- sluice nodes on it. What a user sees: an event published on one node
-- reaches the subscribers of every node once, with one id and in one
-- order; Redis away means 503 for publishes while streams stay open, and
-- Redis back means events flow again.
local cluster = require "cluster"
local socket = require "socket"

local APP = cluster.app { history = { ["short."] = 2 } }
local settle = cluster.settle

describe("#cluster several nodes through Redis", function()
  local r, a, b
  if not cluster.nodes({ app = APP, workers = 1 }, function(c) r, a, b = c.r, c.a, c.b end) then return end

  it("delivers an event published on node A to a subscriber on node B, with the same id", function()
    local sa = a:stream("/s?ch=x1")
    local sb = b:stream("/s?ch=x1")
    settle()
    local res = a:post("/pub/x1", "hello")
    assert.equal(202, res.status)
    local eb = assert(sb:next(5), "node B's subscriber got nothing")
    local ea = assert(sa:next(5), "node A's subscriber got nothing")
    assert.equal("hello", eb.data)
    assert.equal("hello", ea.data)
    assert.equal(ea.id, eb.id)
    assert.truthy(tonumber(eb.id) > 1e15, "an id from Redis's clock: " .. tostring(eb.id))
    sa:close()
    sb:close()
  end)

  it("fills a gap from the channel's stream in Redis: an event written there without its live message is delivered, in order", function()
    local sb = b:stream("/s?ch=g")
    settle()
    assert.equal(202, a:post("/pub/g", "one").status)
    local one = assert(sb:next(5))
    assert.equal("one", one.data)
    -- Written into Redis as the publish script would, without the live
    -- message: only the next event's previous id tells of it.
    local p = "t" .. r.port .. ":"
    local id = ("%.0f"):format(tonumber(one.id) + 1)
    assert.equal(id .. "-0", r:cli(("XADD %sch:g %s-0 prev %s event - data injected"):format(p, id, one.id)))
    r:cli(("HSET %slast g %s"):format(p, id))
    r:cli(("SET %sseq %s"):format(p, id))
    assert.equal(202, a:post("/pub/g", "two").status)
    local e1 = assert(sb:next(5), "nothing after the gap")
    local e2 = assert(sb:next(5), "only one event after the gap")
    assert.equal("injected", e1.data)
    assert.equal(id, e1.id)
    assert.equal("two", e2.data)
    assert.truthy(tonumber(e2.id) > tonumber(e1.id))
    sb:close()
  end)

  it("a client cut from node A resumes on node B with exactly what it missed on both channels, in id order, then live events", function()
    local sa = a:stream("/s?ch=r1,r2")
    local watch = a:stream("/s?ch=r1,r2")   -- one publish in Redis before the next
    settle()
    assert.equal(202, a:post("/pub/r1", "seen").status)
    local seen = assert(sa:next(5))
    assert(watch:next(5))
    sa:close()
    local function publish(node, path, n)
      assert.equal(202, node:post(path).status)
      assert.equal(n, #watch:events_until(n, 5), "a publish never came back from Redis")
    end
    assert.equal(202, a:post("/pub/r1", "missed1").status)
    assert(watch:next(5))
    assert.equal(202, b:post("/pub/r2", "missed2").status)
    assert(watch:next(5))
    assert.equal(202, a:post("/pub/r1", "missed3").status)
    assert(watch:next(5))
    publish(b, "/burst/r2?n=3&tag=m", 3)
    watch:close()
    local sb = b:stream("/s?ch=r1,r2", { last_event_id = seen.id })
    local evs = sb:events_until(6, 5)
    local got, last = {}, tonumber(seen.id)
    for _, ev in ipairs(evs) do
      assert.not_equal("sluice-reset", ev.event, "a reset instead of the replay: " .. tostring(ev.data))
      assert.truthy(tonumber(ev.id) > last, "ids not increasing")
      last = tonumber(ev.id)
      got[#got + 1] = ev.data
    end
    assert.same({ "missed1", "missed2", "missed3", "m 1", "m 2", "m 3" }, got)
    -- then live, once
    assert.equal(202, a:post("/pub/r2", "live").status)
    local ev = assert(sb:next(5), "no live event after the replay")
    assert.equal("live", ev.data)
    assert.is_nil(sb:next(0.3), "an event twice")
    sb:close()
  end)

  it("a client resuming from beyond a channel's history gets the reset event (history-expired) and then live events", function()
    local sa = a:stream("/s?ch=short.x")
    settle()
    assert.equal(202, a:post("/pub/short.x", "seen").status)
    local seen = assert(sa:next(5))
    assert.equal(202, a:post("/burst/short.x?n=4&tag=gone").status)   -- history: 2
    assert.equal(4, #sa:events_until(4, 5), "the burst never came back from Redis")
    sa:close()
    local sb = b:stream("/s?ch=short.x", { last_event_id = seen.id })
    local reset = assert(sb:next(5), "no reset event")
    assert.equal("sluice-reset", reset.event)
    local d = require("cjson").decode(reset.data)
    assert.equal("history-expired", d.reason)
    assert.equal("short.x", d.channel)
    assert.equal(seen.id, d.last_event_id)
    assert.is_nil(sb:next(0.3), "a partial replay after the reset")
    assert.equal(202, a:post("/pub/short.x", "live").status)
    local ev = assert(sb:next(5), "no live event after the reset")
    assert.equal("live", ev.data)
    sb:close()
  end)

  it("answers 503 with Retry-After while Redis is down, keeps streams open, and flows again when it is back", function()
    local sb = b:stream("/s?ch=x2")
    settle()
    assert.equal(202, a:post("/pub/x2", "before").status)
    local first = assert(sb:next(5))
    assert.equal("before", first.data)
    r:kill()
    assert(a:wait_log("redis: unavailable", 10, true))
    local res = a:post("/pub/x2", "while down")
    assert.equal(503, res.status)
    assert.equal("1", res.headers["retry-after"])
    assert.equal("redis unavailable", res.body)
    -- still open: heartbeats keep coming
    local c0 = #sb.comments
    sb:fill(1)
    sb:fill(1)
    assert.truthy(#sb.comments > c0, "no heartbeat while Redis was down")
    assert.falsy(sb.ended)
    r:start()
    local deadline = socket.gettime() + 15
    local status
    repeat
      socket.sleep(0.2)
      status = a:post("/pub/x2", "after").status
    until status == 202 or socket.gettime() > deadline
    assert.equal(202, status)
    -- This Redis keeps nothing on disk: it came back empty, so the stream
    -- is told that what it had is gone before new events flow.
    local reset = assert(sb:next(10), "nothing after Redis came back")
    assert.equal("sluice-reset", reset.event)
    assert.truthy(reset.data:find('"reason":"history-lost"', 1, true), reset.data)
    local ev = assert(sb:next(10), "nothing after the reset")
    assert.equal("after", ev.data)
    assert.truthy(tonumber(ev.id) > tonumber(first.id))
    sb:close()
  end)
end)

describe("#cluster 2 nodes x 2 workers", function()
  local a, b
  if not cluster.nodes({ app = APP, workers = 2, quiet = true }, function(c) a, b = c.a, c.b end) then
    return
  end

  it("delivers every one of 10,000 events of publishers on both nodes once, in one increasing id order", function()
    local streams = {}
    for i = 1, 3 do
      streams[#streams + 1] = a:stream("/s?ch=many")
      streams[#streams + 1] = b:stream("/s?ch=many")
    end
    socket.sleep(0.5)
    -- per node: 20 requests of 250 (spread over workers): 10,000 in all
    local per, bursts = 250, 20
    for i = 1, bursts do
      assert.equal(202, a:post(("/burst/many?n=%d&tag=a%d"):format(per, i)).status)
      assert.equal(202, b:post(("/burst/many?n=%d&tag=b%d"):format(per, i)).status)
    end
    local total = per * bursts * 2
    local first_ids
    for si, s in ipairs(streams) do
      local evs = s:events_until(total, 60)
      assert.equal(total, #evs, "stream " .. si .. " got " .. #evs .. " of " .. total)
      local seen, last, ids = {}, 0, {}
      for _, ev in ipairs(evs) do
        assert.is_nil(seen[ev.data], "duplicate " .. ev.data)
        seen[ev.data] = true
        local id = tonumber(ev.id)
        assert.truthy(id > last, "ids not increasing on stream " .. si)
        last = id
        ids[#ids + 1] = ev.id
      end
      -- the order of each publisher is kept
      local next_i = {}
      for _, ev in ipairs(evs) do
        local tag, n = ev.data:match("^(%S+) (%d+)$")
        n = tonumber(n)
        assert.equal((next_i[tag] or 0) + 1, n, "publisher " .. tag .. " out of order")
        next_i[tag] = n
      end
      if first_ids then assert.same(first_ids, ids) else first_ids = ids end
      s:close()
    end
  end)
end)
