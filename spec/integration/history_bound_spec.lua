-- The history of all channels together is bounded (--max-history-bytes):
-- publishing to many channels cannot grow the server without limit; the
-- oldest events of all go first, and a client resuming from one of them is
-- told it missed something, while recent events still resume exactly.
local multi = require "multi"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()

app:stream("/s/:ch", function(req, s) s:subscribe(req.params.ch) end)

-- n events of size bytes, spread round-robin over `channels` channels
-- (prefix .. 1 .. channels); answers the ids of the first and last rounds
app:post("/flood/:prefix", function(req)
  local nch, n, size = tonumber(req.query.channels), tonumber(req.query.n), tonumber(req.query.size)
  local pad = ("x"):rep(size)
  local first, last = {}, {}
  for i = 1, n do
    local k = (i - 1) % nch + 1
    local id = sluice.publish(req.params.prefix .. k, { data = pad })
    if i <= nch then first[k] = id end
    last[k] = id
  end
  return 200, { first = first, last = last }
end)

-- n events of random sizes (1..maxsize) on random channels of `channels`;
-- "tiny" channels keep 3 events, so per-channel and global eviction mix.
-- Answers each channel's last id.
app:history("tiny", { size = 3 })
app:post("/mix", function(req)
  local nch, n, maxsize = tonumber(req.query.channels), tonumber(req.query.n), tonumber(req.query.maxsize)
  math.randomseed(tonumber(req.query.seed))
  local last = {}
  for _ = 1, n do
    local k = math.random(nch)
    local name = (k % 3 == 0 and "tiny" or "mix") .. k
    last[name] = sluice.publish(name, { data = ("y"):rep(math.random(maxsize)) })
  end
  return 200, last
end)

-- one one-byte event on each of n distinct channels (prefix-1 .. prefix-n)
app:post("/distinct/:prefix", function(req)
  local n = tonumber(req.query.n)
  for i = 1, n do sluice.publish(req.params.prefix .. "-" .. i, { data = "x" }) end
  return 200, "published"
end)

app:get("/stats", function() return sluice.stats() end)

return app
]]

local CAP = 256 * 1024

local function flood(srv, prefix, channels, n, size)
  local r = multi.request(srv.port, "POST",
    ("/flood/%s?channels=%d&n=%d&size=%d"):format(prefix, channels, n, size))
  assert.equal(200, r.status, r.body)
  return multi.json(r.body)
end

describe("history bounded across channels", function()
  local srv
  before_each(function()
    srv = multi.start { apps = { ["app.lua"] = APP },
                        args = { "--no-watch", "--heartbeat", "0", "--max-history-bytes", tostring(CAP),
                                  -- the floods are long Lua loops (slower still under ASan)
                                  "--lua-cpu-budget", "5000" } }
  end)
  after_each(function() srv:stop() end)

  it("keeps the bytes under the bound and drops the oldest events first", function()
    -- 40 channels x 50 events of 1 KiB: ~2 MiB published, 256 KiB kept
    local ids = flood(srv, "b", 40, 2000, 1024)
    local st = multi.get_json(srv.port, "/stats")
    assert.is_true(st.history_bytes <= CAP, ("history holds %d bytes"):format(st.history_bytes))
    assert.is_true(st.history_bytes > CAP / 2, ("history holds only %d bytes"):format(st.history_bytes))
    assert.is_true(st.history_events > 100 and st.history_events < 300,
      ("history holds %d events"):format(st.history_events))

    -- resuming from a first-round event: its channel's early events are gone
    for _, k in ipairs { 1, 20 } do
      local s = multi.open(srv.port, "/s/b" .. k, { ["Last-Event-ID"] = tostring(ids.first[k]) })
      assert.equal(200, s.status)
      local ev = s:next(3)
      assert.truthy(ev, "no reset event")
      assert.equal("sluice-reset", ev.event)
      local d = multi.json(ev.data)
      assert.same({ "b" .. k, "history-expired" }, { d.channel, d.reason })
      s:close()
    end

    -- the newest events of all stay, in every channel (a bound that
    -- dropped whole channels instead would fail here): from three rounds
    -- back (ids are global, 40 per round) exactly the last three
    for k = 1, 40 do
      local from = ids.last[k] - 120
      local s1 = multi.open(srv.port, "/s/b" .. k, { ["Last-Event-ID"] = ("%.0f"):format(from) })
      local got = s1:take(3, 3)
      s1:close()
      local got_ids = {}
      for i, ev in ipairs(got) do got_ids[i] = ev.event == "sluice-reset" and "reset" or tonumber(ev.id) end
      assert.same({ from + 40, from + 80, from + 120 }, got_ids, "b" .. k .. " lost recent events")
    end

    -- resuming from a recent event (the last round but one, channel 40):
    -- exactly the one event after it, no reset
    local r2 = flood(srv, "c", 1, 3, 10)   -- newest events, on a fresh channel
    local s2 = multi.open(srv.port, "/s/c1", { ["Last-Event-ID"] = tostring(r2.first[1]) })
    local got = s2:take(2, 3)
    assert.equal(2, #got, "recent events did not resume")
    assert.same({ r2.first[1] + 1, r2.first[1] + 2 }, { tonumber(got[1].id), tonumber(got[2].id) })
    assert.is_nil(s2:next(0.2))
    s2:close()
  end)

  it("does not keep an event larger than the whole bound", function()
    local small = flood(srv, "keep", 5, 5, 100)
    flood(srv, "huge", 1, 1, CAP + 1)
    local st = multi.get_json(srv.port, "/stats")
    assert.equal(5, st.history_events, "the big event pushed the others out")
    -- and the others still resume
    local s = multi.open(srv.port, "/s/keep3", { ["Last-Event-ID"] = ("%.0f"):format(small.first[3] - 1) })
    local ev = s:next(3)
    s:close()
    assert.equal(tonumber(small.first[3]), ev and tonumber(ev.id))
  end)

  it("stays consistent when per-channel and global eviction mix", function()
    for seed = 1, 3 do
      local r = multi.request(srv.port, "POST",
        ("/mix?channels=300&n=20000&maxsize=4096&seed=%d"):format(seed))
      assert.equal(200, r.status, r.body)
      local last = multi.json(r.body)
      local st = multi.get_json(srv.port, "/stats")
      assert.is_true(st.history_bytes <= CAP, ("history holds %d bytes"):format(st.history_bytes))
      -- from a channel's own last id nothing was missed: no reset, no replay
      local checked = 0
      for name, id in pairs(last) do
        if checked == 5 then break end
        checked = checked + 1
        local s = multi.open(srv.port, "/s/" .. name, { ["Last-Event-ID"] = tostring(id) })
        assert.equal(200, s.status)
        local ev = s:next(0.05)
        assert.is_nil(ev, ("%s resumed from its last id %s got %s"):format(
          name, tostring(id), ev and (ev.event or "message") .. " " .. tostring(ev.data):sub(1, 80) or ""))
        s:close()
      end
    end
  end)

  local memory_it = multi.sanitized() and pending or it
  memory_it("counts what each channel costs: many one-event channels keep RSS within the bound", function()
    -- 200,000 one-byte events, each on a channel of its own: the channel
    -- records (struct, name, ring, heap slot) cost far more than the
    -- events, and must be inside the bound too (they once grew the server
    -- by ~600 bytes a channel while history_bytes counted ~80)
    local before = multi.rss_kib(srv.pid)
    for round = 1, 4 do
      local r = multi.request(srv.port, "POST", ("/distinct/d%d?n=50000"):format(round))
      assert.equal(200, r.status, r.body)
      local st = multi.get_json(srv.port, "/stats")
      assert.is_true(st.history_bytes <= CAP, ("history holds %d bytes"):format(st.history_bytes))
    end
    local after = multi.rss_kib(srv.pid)
    local st = multi.get_json(srv.port, "/stats")
    print(("\n[history_bound] RSS %d KiB -> %d KiB after 200,000 one-byte events on distinct channels; history %d bytes, %d events, %d channels")
      :format(before, after, st.history_bytes, st.history_events, st.channels))
    assert.is_true(after - before < 12 * 1024,
      ("RSS grew %d KiB (bound: 12 MiB; the history bound is %g KiB)"):format(after - before, CAP / 1024))
    -- a channel that lost its history and has no subscriber is forgotten
    assert.is_true(st.channels < 5000, ("%d channel records kept"):format(st.channels))
  end)

  memory_it("keeps RSS flat however many channels are published to", function()
    flood(srv, "warm", 2000, 4000, 1024)   -- reach the bound once
    local before = multi.rss_kib(srv.pid)
    -- 2,000 channels x 100 events of 1 KiB: ~200 MiB without the bound
    for round = 1, 5 do flood(srv, "r" .. round, 2000, 40000, 1024) end
    local after = multi.rss_kib(srv.pid)
    local st = multi.get_json(srv.port, "/stats")
    print(("\n[history_bound] RSS %d KiB -> %d KiB after 200,000 x 1 KiB events on 10,000 channels; history %d bytes, %d events, %d channels")
      :format(before, after, st.history_bytes, st.history_events, st.channels))
    assert.is_true(st.history_bytes <= CAP)
    assert.is_true(after - before < 24 * 1024,
      ("RSS grew %d KiB (bound: 24 MiB)"):format(after - before))
  end)
end)
