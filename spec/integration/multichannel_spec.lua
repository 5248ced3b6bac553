-- Streams on several channels, on the real binary: events of all their
-- channels interleaved in publish (id) order, and resume with one
-- Last-Event-ID for all of them.
local multi = require "multi"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()

app:history("short.", { size = 3 })
app:history("eph.", { size = 0 })      -- no history: live only

-- /multi?ch=a,b,c subscribes to every listed channel
app:stream("/multi", function(req, s)
  for ch in (req.query.ch or ""):gmatch("[^,]+") do s:subscribe(ch) end
end)

app:post("/pub/:ch", function(req)
  local id, n = sluice.publish(req.params.ch, { data = req.body })
  return 200, { id = id, subscribers = n }
end)

return app
]]

local function open(srv, channels, last)
  local s = multi.open(srv.port, "/multi?ch=" .. table.concat(channels, ","),
                       last and { ["Last-Event-ID"] = last } or nil)
  assert.equal(200, s.status)
  return s
end

-- Publishes { {channel, data}, ... } in this order (pipelined); returns
-- the publishes with their ids and subscriber counts.
local function publish_all(srv, list)
  local reqs = {}
  for i, p in ipairs(list) do reqs[i] = { "POST", "/pub/" .. p[1], p[2] } end
  local out = {}
  for i, r in ipairs(multi.pipeline(srv.port, reqs)) do
    assert.equal(200, r.status)
    local a = multi.json(r.body)
    out[i] = { channel = list[i][1], data = list[i][2], id = a.id, subscribers = a.subscribers }
  end
  return out
end

-- n publishes spread at random (fixed seed) over channels.
local function random_publishes(channels, n, tag)
  local list = {}
  for i = 1, n do
    local ch = channels[math.random(#channels)]
    list[i] = { ch, ("%s:%s:%d"):format(tag, ch, i) }
  end
  return list
end

-- The published events a subscriber of channels should get, in order.
local function expected_for(published, channels)
  local want, set = {}, {}
  for _, ch in ipairs(channels) do set[ch] = true end
  for _, p in ipairs(published) do
    if set[p.channel] then want[#want + 1] = { id = p.id, data = p.data, event = "message" } end
  end
  return want
end

local function assert_reset(ev, channel, reason)
  assert.is_truthy(ev, "expected a reset event, got nothing")
  assert.equal("sluice-reset", ev.event, "expected the reset event, got data " .. tostring(ev.data))
  local d = multi.json(ev.data)
  assert.equal(channel, d.channel)
  assert.equal(reason, d.reason)
  return d
end

describe("a stream on several channels", function()
  local srv
  setup(function()
    math.randomseed(4242)
    srv = multi.start { apps = { ["app.lua"] = APP }, args = { "--heartbeat 0" } }
  end)
  teardown(function() srv:stop() end)

  it("receives the events of both channels interleaved in publish order, and no others", function()
    local chans = { "mc.a", "mc.b" }
    local s = open(srv, chans)
    local pubs = publish_all(srv, random_publishes({ "mc.a", "mc.b", "mc.c" }, 300, "live"))
    local prev = 0
    for _, p in ipairs(pubs) do
      assert.equal(p.channel == "mc.c" and 0 or 1, p.subscribers, p.channel)
      assert.is_true(tonumber(p.id) > prev)
      prev = tonumber(p.id)
    end
    local want = expected_for(pubs, chans)
    assert.is_true(#want > 150 and #want < 250)
    assert.is_nil(multi.diff_events(s:take(#want, 5), want, "two-channel stream"))
    assert.is_nil(s:next(0.2), "an event of a channel it is not subscribed to arrived")
    s:close()
  end)

  it("resumes both channels after disconnects: missed events merged in id order, none lost or doubled", function()
    local chans = { "mr.a", "mr.b" }
    local all = { "mr.a", "mr.b", "mr.c" }
    local s = open(srv, chans)
    local got, want, last = {}, {}, nil
    for round = 1, 6 do
      -- events while connected: read only some of them, then hang up
      local pubs = publish_all(srv, random_publishes(all, 60, "r" .. round .. "on"))
      for _, w in ipairs(expected_for(pubs, chans)) do want[#want + 1] = w end
      local k = math.random(round == 1 and 1 or 0, 30)
      for _, ev in ipairs(s:take(k, 3)) do
        got[#got + 1] = ev
        last = ev.id
      end
      s:close()
      -- events while away
      pubs = publish_all(srv, random_publishes(all, 60, "r" .. round .. "off"))
      for _, w in ipairs(expected_for(pubs, chans)) do want[#want + 1] = w end
      assert.is_truthy(last, "no event read yet to resume from")
      s = open(srv, chans, last)
    end
    -- the last connection reads everything left
    for _, ev in ipairs(s:take(#want - #got, 5)) do got[#got + 1] = ev end
    assert.is_nil(s:next(0.2), "more events than were published")
    assert.is_nil(multi.diff_events(got, want, "resumed stream"))
    -- and it is live on both channels
    local live = publish_all(srv, { { "mr.b", "live-b" }, { "mr.c", "live-c" }, { "mr.a", "live-a" } })
    assert.is_nil(multi.diff_events(s:take(2, 3), expected_for(live, chans), "live after resume"))
    s:close()
  end)

  it("gets a reset for the channel past its history and the other channel's missed events", function()
    local chans = { "short.x", "mh.y" }
    local s = open(srv, chans)
    local first = publish_all(srv, { { "mh.y", "seen" } })
    assert.equal(first[1].id, s:next(3).id)
    s:close()
    -- 5 missed on each; short.* keeps 3
    local list = {}
    for i = 1, 10 do list[i] = { i % 2 == 0 and "short.x" or "mh.y", "m" .. i } end
    local pubs = publish_all(srv, list)
    s = open(srv, chans, first[1].id)
    local d = assert_reset(s:next(3), "short.x", "history-expired")
    assert.equal(first[1].id, d.last_event_id)
    assert.is_nil(multi.diff_events(s:take(5, 3), expected_for(pubs, { "mh.y" }), "replay of mh.y"))
    assert.is_nil(s:next(0.2), "short.x history was replayed after its reset")
    local live = publish_all(srv, { { "short.x", "live-x" }, { "mh.y", "live-y" } })
    assert.is_nil(multi.diff_events(s:take(2, 3), expected_for(live, chans), "live after resume"))
    s:close()
  end)

  it("gets one unknown-id reset per channel for an id it cannot place", function()
    publish_all(srv, { { "mu.a", "before" } })
    local s = open(srv, { "mu.a", "mu.b" }, "garbage")
    local chans = {}
    for _ = 1, 2 do
      local ev = s:next(3)
      chans[#chans + 1] = assert_reset(ev, multi.json(ev.data).channel, "unknown-id").channel
    end
    table.sort(chans)
    assert.same({ "mu.a", "mu.b" }, chans)
    assert.is_nil(s:next(0.2))
    local live = publish_all(srv, { { "mu.b", "live-b" }, { "mu.a", "live-a" } })
    assert.is_nil(multi.diff_events(s:take(2, 3), expected_for(live, { "mu.a", "mu.b" }), "live"))
    s:close()
  end)

  it("gets each event once when it subscribes to the same channel twice", function()
    local s = open(srv, { "md.a", "md.a" })
    local pubs = publish_all(srv, { { "md.a", "1" }, { "md.a", "2" }, { "md.a", "3" } })
    for _, p in ipairs(pubs) do assert.equal(1, p.subscribers) end
    assert.is_nil(multi.diff_events(s:take(3, 3), expected_for(pubs, { "md.a" }), "doubled channel"))
    assert.is_nil(s:next(0.2), "an event came twice")
    s:close()
  end)

  it("resumes without a reset when one of its channels never had an event", function()
    local chans = { "mq.busy", "mq.quiet" }
    local s = open(srv, chans)
    local first = publish_all(srv, { { "mq.busy", "seen" } })
    assert.equal(first[1].id, s:next(3).id)
    s:close()
    local pubs = publish_all(srv, { { "mq.busy", "1" }, { "mq.busy", "2" }, { "mq.busy", "3" } })
    s = open(srv, chans, first[1].id)
    assert.is_nil(multi.diff_events(s:take(3, 3), expected_for(pubs, chans), "resumed"))
    assert.is_nil(s:next(0.2))
    s:close()
  end)

  it("resumes without a reset on a quiet channel after an unrelated history-less publish", function()
    -- Nothing was ever published on ms.quiet; while the client is away an
    -- event goes to eph.other, a channel without history that nobody
    -- subscribes to. The client missed nothing on ms.quiet.
    local chans = { "ms.busy", "ms.quiet" }
    local s = open(srv, chans)
    local first = publish_all(srv, { { "ms.busy", "seen" } })
    assert.equal(first[1].id, s:next(3).id)
    s:close()
    local pubs = publish_all(srv, { { "ms.busy", "1" }, { "eph.other", "x" }, { "ms.busy", "2" } })
    s = open(srv, chans, first[1].id)
    local evs = s:take(2, 3)
    local extra = s:next(0.2)
    s:close()
    assert.is_nil(multi.diff_events(evs, expected_for(pubs, chans), "resumed"),
      "got: " .. (evs[1] and (evs[1].event .. " " .. evs[1].data) or "nothing"))
    assert.is_nil(extra)
  end)
end)
