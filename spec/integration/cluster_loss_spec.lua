-- Cluster mode (--redis): never a silent loss. Each describe starts its
-- own redis-server (spec/helpers/redis.lua) and two sluice nodes on it,
-- then breaks something between them: node B's subscriber connection
-- killed in Redis, Redis killed and started again with its data, a
-- channel's history deleted under a live channel, an event written to
-- Redis with no live message at all. What a subscriber must see: every
-- event once, in id order, or the reset event where an event is gone.
local server = require "server"
local cluster = require "cluster"
local socket = require "socket"
local cjson = require "cjson"
local admin = require "admin"

local APP = cluster.app { history = { ["none."] = 0 } }
local settle, stats = cluster.settle, cluster.stats

-- Events of s until every one of want came (bounded): asserts no reset,
-- no duplicate, ids strictly increasing, and the order of each publisher
-- (want is a list of { data, publisher }; a 202 means queued, so two
-- nodes' publishes may reach Redis in either order). Returns the data in
-- the order received.
local function collect(s, want, timeout, who)
  local missing, n = {}, 0
  for _, w in ipairs(want) do missing[w[1]] = true; n = n + 1 end
  local got, seen, prev, last_of = {}, {}, 0, {}
  local order = {}
  for i, w in ipairs(want) do order[w[1]] = { i, w[2] } end
  local evs = s:events_until(function(ev)
    if missing[ev.data] then missing[ev.data] = nil; n = n - 1 end
    return n == 0
  end, timeout)
  for _, ev in ipairs(evs) do
    assert.not_equal("sluice-reset", ev.event, who .. ": a reset: " .. tostring(ev.data))
    assert.is_nil(seen[ev.data], who .. ": twice: " .. ev.data)
    seen[ev.data] = true
    local id = tonumber(ev.id)
    assert.truthy(id > prev, who .. ": ids not increasing at " .. ev.data)
    prev = id
    local o = order[ev.data]
    if o then
      assert.truthy((last_of[o[2]] or 0) < o[1], who .. ": " .. ev.data .. " out of its publisher's order")
      last_of[o[2]] = o[1]
    end
    got[#got + 1] = ev.data
  end
  local lost = {}
  for d in pairs(missing) do lost[#lost + 1] = d end
  table.sort(lost)
  assert.equal(0, #lost, who .. ": never got " .. table.concat(lost, ", ") .. " (" .. #got .. " events)")
  return got
end

describe("#cluster node B's subscriber connection killed in Redis", function()
  local r, a, b
  if not cluster.nodes({ app = APP, tag = "k" }, function(c) r, a, b = c.r, c.a, c.b end) then
    return
  end

  it("catches up from history while node A publishes: every event once, in order, no reset", function()
    local sb = b:stream("/s?ch=k")
    settle()
    local name = "sluice-sub-" .. b.pid
    local id = cluster.connection_id(r, b, "sub")
    assert.truthy(id, "node B's subscriber connection is not named " .. name .. ": " ..
                  r:cli("CLIENT LIST"))
    local before = stats(b).redis
    local want = {}
    for i = 1, 40 do
      assert.equal(202, a:post("/pub/k", "e" .. i).status)
      want[#want + 1] = { "e" .. i, "a" }
      if i == 10 then
        assert.equal("1", r:cli("CLIENT KILL ID " .. id))
      end
      if i > 10 and i < 30 then socket.sleep(0.01) end   -- through the reconnect
    end
    assert.equal(40, #collect(sb, want, 15, "node B"))
    assert.truthy(b:log():find("subscriber connection lost", 1, true), "the drop was not noticed")
    local after = stats(b).redis
    assert.truthy(after.reconnects_subscriber > before.reconnects_subscriber,
                  "reconnects_subscriber did not rise")
    assert.equal(before.history_lost, after.history_lost)
    sb:close()
  end)
end)

describe("#cluster a new channel's first events while node B's subscriber connection is lost", function()
  local r, a, b
  if not cluster.nodes({ app = APP, tag = "n" }, function(c) r, a, b = c.r, c.a, c.b end) then
    return
  end

  it("are caught up from history though the stream had received nothing yet", function()
    for i = 1, 3 do
      local ch = "n" .. i
      local sb = b:stream("/s?ch=" .. ch)
      settle()
      local id = assert(cluster.connection_id(r, b, "sub"),
                        "node B's subscriber connection is not named")
      assert.equal("1", r:cli("CLIENT KILL ID " .. id))
      assert.equal(202, a:post("/pub/" .. ch, "first").status)
      local ev, err = sb:next(5)
      assert.truthy(ev, ch .. ": the event published while the connection was lost never came (" ..
                    tostring(err) .. ")")
      assert.equal("first", ev.data)
      assert.equal(202, a:post("/pub/" .. ch, "second").status)
      assert.equal("second", assert(sb:next(5)).data)
      sb:close()
    end
  end)
end)

describe("#cluster Redis killed and started again with its data", function()
  local r, a, b
  if not cluster.nodes({ app = APP, tag = "p", persist = true }, function(c) r, a, b = c.r, c.a, c.b end) then
    return
  end

  it("answers 503 in the gap, keeps streams open, and loses nothing that was answered 202", function()
    local sa = a:stream("/s?ch=p")
    local sb = b:stream("/s?ch=p")
    settle()
    for i = 1, 20 do
      assert.equal(202, a:post("/pub/p", "before" .. i).status)
    end
    assert.equal("before20", sb:events_until(function(ev) return ev.data == "before20" end, 10)[20].data)
    for _ = 1, 20 do sa:next(5) end
    r:kill()
    assert(a:wait_log("redis: unavailable", 10, true), "node A never noticed")
    for i = 1, 3 do
      local res = a:post("/pub/p", "gap" .. i)
      assert.equal(503, res.status)
      assert.equal("1", res.headers["retry-after"])
    end
    assert.equal(503, b:post("/pub/p", "gap-b").status)
    local sc = b:stream("/s?ch=p")   -- a new stream opens while Redis is away
    local c0 = #sb.comments
    sb:wait_comments(c0 + 2, 5)
    assert.truthy(#sb.comments >= c0 + 2, "no heartbeats while Redis was away")
    assert.falsy(sa.ended or sb.ended or sc.ended, "a stream ended while Redis was away")
    assert.truthy(stats(a).redis.reachable == 0, "stats say Redis is reachable")
    r:start()
    local deadline, status = socket.gettime() + 15, nil
    repeat
      status = a:post("/pub/p", "after1").status
      if status ~= 202 then socket.sleep(0.1) end
    until status == 202 or socket.gettime() > deadline
    assert.equal(202, status, "publishes never flowed again")
    local want = { { "after1", "a" } }
    for i = 2, 10 do
      local node_ = i % 2 == 0 and b or a
      assert.equal(202, node_:post("/pub/p", "after" .. i).status)
      want[#want + 1] = { "after" .. i, i % 2 == 0 and "b" or "a" }
    end
    assert.equal(10, #collect(sa, want, 10, "node A"))
    assert.equal(10, #collect(sb, want, 10, "node B"))
    assert.equal(10, #collect(sc, want, 10, "the stream opened in the gap"))
    assert.is_nil(b:log():find("lost its data", 1, true), "Redis with its data taken for an empty one")
    assert.equal(1, stats(a).redis.reachable)
    sa:close()
    sb:close()
    sc:close()
  end)
end)

describe("#cluster Redis killed while publishes are on their way", function()
  local r, a
  if not cluster.nodes({ app = APP, tag = "m", nodes = 1, persist = true }, function(c) r, a = c.r, c.a end) then
    return
  end
  -- A publish in a plain handler waits for Redis's answer, so a 202 means
  -- published (in Redis's append-only file here): killing Redis right
  -- after cannot lose any of them.
  it("every publish answered 202 before the kill is delivered after Redis is back with its data", function()
    local s = a:stream("/s?ch=m")
    settle()
    assert.equal(202, a:post("/burst/m?n=2000&tag=x").status)
    r:kill()
    r:start()
    local evs = s:events_until(2000, 15)
    assert.equal(2000, #evs)
  end)
end)

describe("#cluster gaps", function()
  local r, a, b, p
  local args = { nil, { "--admin-listen", "127.0.0.1:0" } }
  if not cluster.nodes({ app = APP, tag = "g", args = args }, function(c)
    r, a, b, p = c.r, c.a, c.b, cluster.prefix(c.r, "g")
  end) then
    return
  end

  -- As the publish script would, without the live message: the stream
  -- entry, the channel's last id and the sequence.
  local function inject(ch, prev_id, data)
    local id = ("%.0f"):format(tonumber(prev_id) + 1)
    assert.equal(id .. "-0", r:cli(("XADD %sch:%s %s-0 prev %s event - data %s"):format(p, ch, id, prev_id, data)))
    r:cli(("HSET %slast %s %s"):format(p, ch, id))
    r:cli(("SET %sseq %s"):format(p, id))
    return id
  end

  it("a gap that cannot be filled (the channel's stream deleted in Redis): the reset event (history-lost), then the next events", function()
    local sb = b:stream("/s?ch=d")
    settle()
    assert.equal(202, a:post("/pub/d", "one").status)
    local one = assert(sb:next(5))
    assert.equal("one", one.data)
    local before = stats(b).redis
    inject("d", one.id, "gone")
    assert.equal("1", r:cli(("DEL %sch:d"):format(p)))
    assert.equal(202, a:post("/pub/d", "three").status)
    local reset = assert(sb:next(5), "nothing after the gap")
    assert.equal("sluice-reset", reset.event, "not a reset but " .. tostring(reset.data))
    local body = cjson.decode(reset.data)
    assert.equal("history-lost", body.reason)
    assert.equal("d", body.channel)
    assert.equal(one.id, body.last_event_id)
    local ev = assert(sb:next(5), "nothing after the reset")
    assert.equal("three", ev.data)
    assert.is_nil(sb:next(0.3), "more than the reset and the next event")
    assert.equal(202, a:post("/pub/d", "four").status)
    assert.equal("four", assert(sb:next(5)).data)
    local after = stats(b).redis
    assert.equal(before.history_lost + 1, after.history_lost)
    sb:close()
  end)

  it("a gap on a channel that keeps no history: the reset event (history-lost), then the next event", function()
    local sb = b:stream("/s?ch=none.x")
    settle()
    assert.equal(202, a:post("/pub/none.x", "one").status)
    local one = assert(sb:next(5))
    -- A live message lost: only the last id says it existed.
    local id = ("%.0f"):format(tonumber(one.id) + 1)
    r:cli(("HSET %slast none.x %s"):format(p, id))
    r:cli(("SET %sseq %s"):format(p, id))
    assert.equal(202, a:post("/pub/none.x", "three").status)
    local reset = assert(sb:next(5), "nothing after the gap")
    assert.equal("sluice-reset", reset.event)
    assert.equal("history-lost", cjson.decode(reset.data).reason)
    assert.equal("three", assert(sb:next(5)).data)
    sb:close()
  end)

  it("a gap filled from history counts in the metrics (gaps filled)", function()
    local port = admin.port(b)
    local function sample(series)
      return admin.sample(admin.get(port, "/metrics").body, series)
    end
    local filled0 = assert(sample("sluice_redis_gaps_filled_total"), "no sluice_redis_gaps_filled_total")
    local sb = b:stream("/s?ch=f")
    settle()
    assert.equal(202, a:post("/pub/f", "one").status)
    local one = assert(sb:next(5))
    inject("f", one.id, "injected")
    assert.equal(202, a:post("/pub/f", "two").status)
    assert.same({ "injected", "two" }, collect(sb, { { "injected", "x" }, { "two", "x" } }, 5, "node B"))
    assert.equal(filled0 + 1, sample("sluice_redis_gaps_filled_total"))
    assert.equal(1, sample("sluice_redis_up"))
    assert.equal(0, sample("sluice_redis_queued"))
    assert.truthy(sample('sluice_redis_reconnects_total{connection="subscriber"}'))
    assert.truthy(sample("sluice_redis_lost_in_flight_total"))
    assert.truthy(sample("sluice_redis_probe_failures_total"))
    assert.truthy(sample("sluice_redis_history_lost_total"))
    sb:close()
  end)

  it("a gap seen while the node's publishing connection is down is filled once it is back (the node keeps serving)", function()
    local sb = b:stream("/s?ch=w")
    settle()
    assert.equal(202, a:post("/pub/w", "one").status)
    local one = assert(sb:next(5))
    local pub = assert(cluster.connection_id(r, b, "pub"),
                       "node B's publishing connection is not named")
    -- An event in the stream whose live message is lost, then a live
    -- message after it, sent while node B has no publishing connection
    -- (it reconnects 0.1 s later): the fill must wait for it.
    local id = inject("w", one.id, "missed")
    local id2 = ("%.0f"):format(tonumber(id) + 1)
    r:cli(("XADD %sch:w %s-0 prev %s event - data next"):format(p, id2, id))
    r:cli(("HSET %slast w %s"):format(p, id2))
    r:cli(("SET %sseq %s"):format(p, id2))
    server.sh(("redis-cli -h 127.0.0.1 -p %d CLIENT KILL ID %s >/dev/null; " ..
               "printf '%s\n%s\n-\nnext' | redis-cli -h 127.0.0.1 -p %d -x PUBLISH %slive:w >/dev/null")
              :format(r.port, pub, id2, id, r.port, p))
    assert.same({ "missed", "next" }, collect(sb, { { "missed", "x" }, { "next", "x" } }, 5, "node B"))
    assert.equal(202, a:post("/pub/w", "after").status)
    assert.equal("after", assert(sb:next(5), "nothing after the gap").data)
    assert.truthy(server.alive(b.pid), "node B died")
    sb:close()
  end)

  it("a quiet channel: an event written to Redis with no live message and nothing after it arrives within the check period", function()
    local sb = b:stream("/s?ch=q")
    settle()
    assert.equal(202, a:post("/pub/q", "one").status)
    local one = assert(sb:next(5))
    local id = inject("q", one.id, "quiet")
    local ev = sb:next(5)
    assert.truthy(ev, "the event written without a live message never came")
    assert.equal("quiet", ev.data)
    assert.equal(id, ev.id)
    assert.is_nil(sb:next(0.5), "it came twice")
    sb:close()
  end)

  it("a quiet channel that keeps no history: a last id beyond what came live gives the reset event (history-lost) within the check period", function()
    local sb = b:stream("/s?ch=none.q")
    settle()
    assert.equal(202, a:post("/pub/none.q", "one").status)
    local one = assert(sb:next(5))
    local id = ("%.0f"):format(tonumber(one.id) + 1)
    r:cli(("HSET %slast none.q %s"):format(p, id))
    r:cli(("SET %sseq %s"):format(p, id))
    local reset = sb:next(5)
    assert.truthy(reset, "no reset for an event gone without a trace")
    assert.equal("sluice-reset", reset.event)
    assert.equal("history-lost", cjson.decode(reset.data).reason)
    assert.is_nil(sb:next(2.5), "the reset came again")
    assert.equal(202, a:post("/pub/none.q", "two").status)
    assert.equal("two", assert(sb:next(5)).data)
    sb:close()
  end)
end)

describe("#cluster a new stream's first events", function()
  local r, a, b
  if not cluster.nodes({ app = APP, tag = "f" }, function(c) r, a, b = c.r, c.a, c.b end) then
    return
  end

  -- The head of a stream goes out before its node's SUBSCRIBE in Redis is
  -- confirmed: what is published once the head came is owed to the
  -- stream, on a channel no stream of that node followed before. Made
  -- certain here by opening the stream while node B's subscriber
  -- connection is being made again (it was killed).
  it("gets what is published after its head came, though its node subscribed later", function()
    local missed = {}
    for i = 1, 3 do
      local ch = "fresh" .. i
      local id = assert(cluster.connection_id(r, b, "sub"),
                        "node B's subscriber connection is not named")
      assert.equal("1", r:cli("CLIENT KILL ID " .. id))
      local sb = b:stream("/s?ch=" .. ch)   -- returns once the head came
      assert.equal(202, a:post("/pub/" .. ch, "first").status)
      local ev = sb:next(5)
      if not ev or ev.data ~= "first" then missed[#missed + 1] = ch end
      assert.equal(202, a:post("/pub/" .. ch, "second").status)
      local ev2 = sb:next(5)
      assert.equal("second", ev2 and ev2.data)
      sb:close()
    end
    assert.same({}, missed)
  end)
end)
