-- Resume with Last-Event-ID on the real binary: a client cut off at random
-- points gets every event exactly once; history bounded by count and by
-- age, unknown ids, the ?last_event_id= parameter and the reset event.
local multi = require "multi"
local socket = require "socket"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()

app:history("long.", { size = 10000 })
app:history("short.", { size = 10 })
app:history("ttl.", { size = 100, ttl = 1 })

app:stream("/s/:ch", function(req, s) s:subscribe(req.params.ch) end)

app:stream("/renamed/:ch", function(req, s)
  s:reset_event("gap")
  s:subscribe(req.params.ch)
end)

app:post("/pub/:ch", function(req)
  local id, n = sluice.publish(req.params.ch, { data = req.body })
  return 200, { id = id, subscribers = n }
end)

-- n events with data prefix..1 .. prefix..n, published at once
app:post("/burst/:ch", function(req)
  local ids = {}
  for i = 1, tonumber(req.query.n) do
    ids[i] = (sluice.publish(req.params.ch, { data = (req.query.prefix or "") .. i }))
  end
  return 200, { ids = ids }
end)

-- A run: a timer publishes data "1".."n" on the channel, batch events per
-- tick. Answers the id of a marker published (on another channel) just
-- before: a resume point that precedes every event of the run.
local runs = {}
app:post("/run/:ch", function(req)
  local ch = req.params.ch
  local n, batch = tonumber(req.query.n), tonumber(req.query.batch)
  local marker = sluice.publish(ch .. "-marker", { data = "start" })
  local run = { seq = 0, n = n }
  runs[ch] = run
  local t
  t = sluice.every(tonumber(req.query.every), function()
    for _ = 1, batch do
      if run.seq >= n then t:stop(); return end
      run.seq = run.seq + 1
      sluice.publish(ch, { data = tostring(run.seq) })
    end
  end)
  return 200, { marker = marker }
end)

app:get("/run/:ch", function(req)
  local run = runs[req.params.ch]
  return 200, { published = run and run.seq or 0 }
end)

app:get("/stats", function()
  local st = sluice.stats()
  st.runtime = nil
  st.last_id = ("%.0f"):format(st.last_id)
  return 200, st
end)

return app
]]

-- Opens a stream; last is sent as Last-Event-ID (or as ?last_event_id=
-- when how == "query").
local function open(srv, path, last, how)
  local headers
  if last ~= nil then
    if how == "query" then
      path = path .. "?last_event_id=" .. last
    else
      headers = { ["Last-Event-ID"] = last }
    end
  end
  local s = multi.open(srv.port, path, headers)
  assert.equal(200, s.status)
  return s
end

local function publish(srv, ch, data)
  local r = multi.request(srv.port, "POST", "/pub/" .. ch, data)
  assert.equal(200, r.status)
  return multi.json(r.body).id
end

local function burst(srv, ch, n, prefix)
  local r = multi.request(srv.port, "POST", ("/burst/%s?n=%d&prefix=%s"):format(ch, n, prefix or ""))
  assert.equal(200, r.status)
  return multi.json(r.body).ids
end

local function last_id(srv)
  return multi.get_json(srv.port, "/stats").last_id
end

-- Asserts ev is a reset event and returns its decoded data.
local function assert_reset(ev, name, channel, reason, last)
  assert.is_truthy(ev, "expected a " .. name .. " event, got nothing")
  assert.equal(name, ev.event, "expected the reset event, got data " .. tostring(ev.data))
  local d = multi.json(ev.data)
  assert.equal(channel, d.channel)
  assert.equal(reason, d.reason)
  if last ~= nil then assert.equal(last, d.last_event_id) end
  return d
end

-- A stream that saw one event of ch and hung up: returns its id.
local function saw_one_and_left(srv, ch)
  local s = open(srv, "/s/" .. ch)
  local id = publish(srv, ch, "seen")
  local ev = s:next(3)
  assert.same({ id, "seen" }, { ev and ev.id, ev and ev.data })
  s:close()
  return id
end

-- After a reset: no history is replayed; the next event is a live one.
local function assert_live_next(srv, s, ch)
  assert.is_nil(s:next(0.2), "an event came after the reset before any was published")
  local id = publish(srv, ch, "live")
  local ev = s:next(3)
  assert.same({ id, "live" }, { ev and ev.id, ev and ev.data })
end

describe("resume", function()
  local srv
  setup(function()
    srv = multi.start { apps = { ["app.lua"] = APP }, args = { "--heartbeat 0" } }
  end)
  teardown(function() srv:stop() end)

  it("survives 50 random cuts during a run of 5,000 events: every event once, in order", function()
    math.randomseed(20240611)
    local CH, N, CUTS = "long.run", 5000, 50
    local seen = {}            -- seq numbers in arrival order
    local ids = {}             -- ids in arrival order
    local resets = {}
    local last = nil           -- Last-Event-ID to send
    local cuts, connections = 0, 0
    local deadline = socket.gettime() + 40

    local s = open(srv, "/s/" .. CH)
    connections = 1
    local r = multi.request(srv.port, "POST", ("/run/%s?n=%d&batch=5&every=0.002"):format(CH, N))
    assert.equal(200, r.status)
    last = multi.json(r.body).marker   -- precedes every event of the run

    local function consume(ev)
      if ev.event ~= "message" then
        resets[#resets + 1] = ev
      else
        seen[#seen + 1] = tonumber(ev.data)
        ids[#ids + 1] = ev.id
        last = ev.id
      end
    end

    for _ = 1, CUTS + 100 do
      if socket.gettime() > deadline or (#seen > 0 and seen[#seen] == N) then break end
      if cuts < CUTS then
        -- read a random number of body bytes (the cut may split an event
        -- or a chunk), then hang up
        local budget = math.random(1, 4000)
        local conn_deadline = socket.gettime() + 10
        for _ = 1, 4000 do
          if budget <= 0 or s.ended or socket.gettime() > conn_deadline then break end
          local before = s.bytes
          s:pump(0.5, budget)
          budget = budget - (s.bytes - before)
          for _ = 1, s:pending() do consume(s:next(0)) end
          if #seen > 0 and seen[#seen] == N then break end
        end
        s:close()
        cuts = cuts + 1
      else
        -- after the cuts: read to the end (a quiet second or an end of
        -- stream means resume again)
        for _ = 1, N + 1 do
          local ev = s:next(1)
          if not ev then break end
          consume(ev)
          if seen[#seen] == N then break end
        end
        if #seen > 0 and seen[#seen] == N then break end
        s:close()
      end
      if #seen > 0 and seen[#seen] == N then break end
      s = open(srv, "/s/" .. CH, last)
      connections = connections + 1
    end
    -- drain briefly: nothing may follow the last event
    for _ = 1, 100 do
      local ev = s:next(0.2)
      if not ev then break end
      consume(ev)
    end
    s:close()

    assert.equal(CUTS, cuts, "the run ended before all the cuts were made")
    assert.equal(0, #resets, "unexpected reset event: " .. tostring(resets[1] and resets[1].data))
    -- every sequence number exactly once, in order
    local problem
    for i = 1, math.max(#seen, N) do
      if seen[i] ~= i then
        problem = ("event #%d has seq %s (expected %d); %d events seen over %d connections")
          :format(i, tostring(seen[i]), i, #seen, connections)
        break
      end
    end
    assert.is_nil(problem, problem)
    for i = 2, #ids do
      if not (tonumber(ids[i]) > tonumber(ids[i - 1])) then
        error(("ids do not grow at #%d: %s after %s"):format(i, ids[i], ids[i - 1]))
      end
    end
    local run = multi.get_json(srv.port, "/run/" .. CH)
    assert.equal(N, run.published)
    print(("\n[resume] %d events over %d connections (%d random cuts)"):format(#seen, connections, cuts))
  end)

  it("replays exactly the missed events after a clean disconnect, then goes live", function()
    local s = open(srv, "/s/long.a")
    local first = burst(srv, "long.a", 3, "a")
    local evs = s:take(3, 3)
    assert.equal(3, #evs)
    s:close()
    local missed = burst(srv, "long.a", 5, "b")
    s = open(srv, "/s/long.a", evs[3].id)
    local want = {}
    for i, id in ipairs(missed) do want[i] = { id = id, data = "b" .. i } end
    assert.is_nil(multi.diff_events(s:take(5, 3), want, "resumed"))
    assert.is_nil(s:next(0.2), "more than the missed events were replayed")
    local live = publish(srv, "long.a", "live")
    local ev = s:next(3)
    assert.same({ live, "live" }, { ev.id, ev.data })
    s:close()
    assert.equal(3, #first)
  end)

  it("replays all of a full history: missed exactly --history size events, no reset", function()
    local seen = saw_one_and_left(srv, "short.full")
    local missed = burst(srv, "short.full", 10)       -- size = 10
    local s = open(srv, "/s/short.full", seen)
    local want = {}
    for i, id in ipairs(missed) do want[i] = { id = id, data = tostring(i), event = "message" } end
    assert.is_nil(multi.diff_events(s:take(10, 3), want, "resumed"))
    assert.is_nil(s:next(0.2))
    s:close()
  end)

  it("sends history-expired when more events were missed than the history holds", function()
    local seen = saw_one_and_left(srv, "short.over")
    burst(srv, "short.over", 11)                      -- one more than size = 10
    local s = open(srv, "/s/short.over", seen)
    assert_reset(s:next(3), "sluice-reset", "short.over", "history-expired", seen)
    assert_live_next(srv, s, "short.over")
    s:close()
  end)

  it("sends history-expired when the missed events are older than the history ttl", function()
    -- ttl.gone: an event was missed, then it expired.
    local gone = saw_one_and_left(srv, "ttl.gone")
    publish(srv, "ttl.gone", "missed")
    -- ttl.kept: nothing was missed; only the event the client saw expired.
    local kept = saw_one_and_left(srv, "ttl.kept")
    socket.sleep(1.6)                                 -- ttl = 1 s
    local s = open(srv, "/s/ttl.gone", gone)
    assert_reset(s:next(3), "sluice-reset", "ttl.gone", "history-expired", gone)
    assert_live_next(srv, s, "ttl.gone")
    s:close()
    local k = open(srv, "/s/ttl.kept", kept)
    local ev = k:next(0.3)
    assert.is_nil(ev, "nothing was missed, yet got " .. tostring(ev and ev.event) .. " " .. tostring(ev and ev.data))
    assert_live_next(srv, k, "ttl.kept")
    k:close()
  end)

  for _, case in ipairs {
    { "a word", function() return "garbage" end },
    { "an id from before this server started", function() return "1" end },
    { "an id far in the future", function(srv) return ("%.0f"):format(tonumber(last_id(srv)) + 1e9) end },
    { "the next id, not yet given out", function(srv) return ("%.0f"):format(tonumber(last_id(srv)) + 1) end },
    { "a number too big for 64 bits", function() return "99999999999999999999999" end },
    { "a negative number", function() return "-5" end },
  } do
    it("answers " .. case[1] .. " with unknown-id, then live events", function()
      publish(srv, "long.unknown", "before")
      local bad = case[2](srv)
      local s = open(srv, "/s/long.unknown", bad)
      assert_reset(s:next(3), "sluice-reset", "long.unknown", "unknown-id")
      assert_live_next(srv, s, "long.unknown")
      s:close()
    end)
  end

  it("echoes the client's Last-Event-ID in the reset data", function()
    publish(srv, "long.echo", "before")
    local future = ("%.0f"):format(tonumber(last_id(srv)) + 1e9)
    for _, bad in ipairs { "1", future } do
      local s = open(srv, "/s/long.echo", bad)
      assert_reset(s:next(3), "sluice-reset", "long.echo", "unknown-id", bad)
      s:close()
    end
  end)

  it("echoes a non-numeric Last-Event-ID in the reset data as sent", function()
    local s = open(srv, "/s/long.echo", "garbage")
    assert_reset(s:next(3), "sluice-reset", "long.echo", "unknown-id", "garbage")
    s:close()
  end)

  it("does not reset a client that saw the newest event", function()
    local id = publish(srv, "long.newest", "x")
    assert.equal(id, last_id(srv))
    local s = open(srv, "/s/long.newest", id)
    assert.is_nil(s:next(0.3))
    assert_live_next(srv, s, "long.newest")
    s:close()
  end)

  it("answers an id given out by an earlier run of the server with unknown-id", function()
    local old = multi.start { apps = { ["app.lua"] = APP } }
    local r = multi.request(old.port, "POST", "/pub/long.prev", "x")
    local old_id = multi.json(r.body).id
    old:stop()
    local again = multi.start { apps = { ["app.lua"] = APP } }
    local ok, err = pcall(function()
      multi.request(again.port, "POST", "/pub/long.prev", "y")
      local s = open(again, "/s/long.prev", old_id)
      assert_reset(s:next(3), "sluice-reset", "long.prev", "unknown-id", old_id)
      assert_live_next(again, s, "long.prev")
      s:close()
    end)
    again:stop()
    assert(ok, err)
  end)

  it("takes ?last_event_id= like the header", function()
    local s = open(srv, "/s/long.query")
    local seen = publish(srv, "long.query", "seen")
    assert.equal(seen, s:next(3).id)
    s:close()
    local missed = burst(srv, "long.query", 4)
    s = open(srv, "/s/long.query", seen, "query")
    local want = {}
    for i, id in ipairs(missed) do want[i] = { id = id, data = tostring(i) } end
    assert.is_nil(multi.diff_events(s:take(4, 3), want, "resumed by query"))
    assert.is_nil(s:next(0.2))
    s:close()
    -- and it gets the reset like the header does
    local q = open(srv, "/s/long.query", "garbage", "query")
    assert_reset(q:next(3), "sluice-reset", "long.query", "unknown-id")
    q:close()
  end)

  it("prefers the Last-Event-ID header to the query parameter", function()
    local seen = publish(srv, "long.both", "seen")
    local missed = publish(srv, "long.both", "missed")
    local s = multi.open(srv.port, "/s/long.both?last_event_id=garbage", { ["Last-Event-ID"] = seen })
    local ev = s:next(3)
    assert.same({ "message", missed, "missed" }, { ev.event, ev.id, ev.data })
    s:close()
  end)

  it("names the reset event as the stream chose with s:reset_event", function()
    local seen = saw_one_and_left(srv, "short.renamed")
    burst(srv, "short.renamed", 11)
    local s = open(srv, "/renamed/short.renamed", seen)
    assert_reset(s:next(3), "gap", "short.renamed", "history-expired", seen)
    assert_live_next(srv, s, "short.renamed")
    s:close()
    local u = open(srv, "/renamed/short.renamed", "1")
    assert_reset(u:next(3), "gap", "short.renamed", "unknown-id", "1")
    u:close()
  end)
end)

describe("resume with --history-len and --history-ttl", function()
  local srv
  setup(function()
    srv = multi.start { apps = { ["app.lua"] = APP },
                         args = { "--heartbeat 0", "--history-len 5", "--history-ttl 1" } }
  end)
  teardown(function() srv:stop() end)

  it("keeps --history-len events per channel", function()
    local seen = saw_one_and_left(srv, "plain.len")
    local missed = burst(srv, "plain.len", 5)
    local s = open(srv, "/s/plain.len", seen)
    local want = {}
    for i, id in ipairs(missed) do want[i] = { id = id, data = tostring(i), event = "message" } end
    assert.is_nil(multi.diff_events(s:take(5, 3), want, "resumed"))
    s:close()
    local more = burst(srv, "plain.len", 6)
    s = open(srv, "/s/plain.len", missed[5])
    assert_reset(s:next(3), "sluice-reset", "plain.len", "history-expired", missed[5])
    assert_live_next(srv, s, "plain.len")
    s:close()
    assert.equal(6, #more)
  end)

  it("forgets events older than --history-ttl", function()
    local seen = saw_one_and_left(srv, "plain.ttl")
    publish(srv, "plain.ttl", "missed")
    socket.sleep(1.6)
    local s = open(srv, "/s/plain.ttl", seen)
    assert_reset(s:next(3), "sluice-reset", "plain.ttl", "history-expired", seen)
    assert_live_next(srv, s, "plain.ttl")
    s:close()
  end)
end)
