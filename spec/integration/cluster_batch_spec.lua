-- Publishes queued back to back on a node go to Redis in one script call
-- (a batch), and a user sees nothing of it: every publish still gets its
-- own id, its handler gets exactly the id the subscribers receive, ids
-- follow the order of the publishes, the live messages and the history are
-- the same as one call per publish would give, and a channel's history
-- keeps exactly its last N events. The batches are checked to happen:
-- Redis counts fewer script calls than publishes.
local cjson = require "cjson"
local cluster = require "cluster"
local raw = require "raw"
local socket = require "socket"

-- /pub/:ch waits for Redis: 202 { id, reached }
local APP = cluster.app { history = { big = 5000, ["short."] = 5 }, routes = [[
-- n publishes queued at once (a coroutine of the script's own cannot
-- wait), alternating over the channels in ch: "<tag> <i>"
app:post("/burst", function(req)
  local chans = {}
  for name in req.query.ch:gmatch("[^,]+") do chans[#chans + 1] = name end
  local n = tonumber(req.query.n)
  for i = 1, n do
    local ok
    coroutine.wrap(function()
      ok = sluice.publish(chans[(i - 1) % #chans + 1], { data = req.query.tag .. " " .. i })
    end)()
    if not ok then return 503, "refused at " .. i end
  end
  return 202, "queued " .. n
end)
]] }

local PREFIX
local settle = cluster.settle

-- Script calls Redis ran so far (EVALSHA and EVAL).
local function script_calls(r)
  local info = r:cli("INFO commandstats")
  local n = 0
  for cmd, calls in info:gmatch("cmdstat_(%a+):calls=(%d+)") do
    if cmd == "evalsha" or cmd == "eval" then n = n + tonumber(calls) end
  end
  return n
end

-- The stream entries of a channel: { id, prev, data } in order.
local function stream_entries(r, ch)
  local lines = {}
  for line in (r:cli(("XRANGE %sch:%s - +"):format(PREFIX, ch)) .. "\n"):gmatch("([^\n]*)\n") do
    lines[#lines + 1] = line
  end
  local out = {}
  for i = 1, #lines - 6, 7 do   -- id, prev, <prev>, event, <event>, data, <data>
    assert.equal("prev", lines[i + 1])
    out[#out + 1] = { id = lines[i]:match("^(%d+)%-0$"), prev = lines[i + 2], data = lines[i + 6] }
  end
  return out
end

-- One complete response off the front of c.buf, or nil.
local function take_response(c)
  local e = c.buf:find("\r\n\r\n", 1, true)
  if not e then return nil end
  local head = c.buf:sub(1, e + 3)
  local len = tonumber(head:match("\r\n[Cc]ontent%-[Ll]ength: *(%d+)"))
  assert(len, "a response without Content-Length: " .. head)
  if #c.buf < e + 3 + len then return nil end
  c:take(e + 3)
  return { status = tonumber(head:match("^HTTP/1%.1 (%d+)")), body = c:take(len) }
end

describe("#cluster publishes batched into one script call", function()
  local r, a, b
  if not cluster.nodes({ app = APP, tag = "b" }, function(c)
    r, a, b, PREFIX = c.r, c.a, c.b, cluster.prefix(c.r, "b")
  end) then
    return
  end

  it("2,000 publishes at once from 40 connections (and a few to another channel): each handler gets its own id, the one the other node's subscribers receive, in order, and the history replays them all", function()
    local sb = b:stream("/s?ch=big")
    local so = b:stream("/s?ch=other")
    settle()
    local calls0 = script_calls(r)
    local CONNS, PER = 40, 50
    local conns, sent = {}, {}   -- sent[data] = channel
    for i = 1, CONNS do
      local c = assert(raw.connect(a.port))
      local reqs = {}
      for j = 1, PER do
        local ch = (i <= 4 and j % 10 == 0) and "other" or "big"
        local data = ("c%d-%d"):format(i, j)
        sent[data] = ch
        reqs[j] = raw.request("POST", "/pub/" .. ch, nil, data)
      end
      conns[i] = { c = c, reqs = reqs, got = {} }
    end
    -- every connection's requests pipelined at once
    for _, k in ipairs(conns) do assert(k.c:send(table.concat(k.reqs))) end
    local returned, by_id, evs = {}, {}, { big = {}, other = {} }
    local left = CONNS * PER
    local deadline = socket.gettime() + 30
    while left > 0 and socket.gettime() < deadline do
      for i, k in ipairs(conns) do
        k.c:fill(0.005)
        while true do
          local res = take_response(k.c)
          if not res then break end
          assert.equal(202, res.status, res.body)
          local j = #k.got + 1
          local data = ("c%d-%d"):format(i, j)
          local id = cjson.decode(res.body).id
          assert.truthy(type(id) == "string" and id:match("^%d+$"), res.body)
          assert.is_nil(by_id[id], "two publishes got the same id " .. id)
          by_id[id] = data
          returned[data] = id
          -- one connection's requests are answered in order, each after
          -- Redis ran it: their ids increase
          if j > 1 then
            assert.truthy(tonumber(id) > tonumber(k.got[j - 1]), "ids of one connection out of order")
          end
          k.got[j] = id
          left = left - 1
        end
      end
      -- keep the streams read meanwhile
      sb:fill(0.001)
      so:fill(0.001)
    end
    assert.equal(0, left, "publishes unanswered")
    for _, k in ipairs(conns) do k.c:close() end
    local calls = script_calls(r) - calls0
    assert.truthy(calls < CONNS * PER,
      ("no batching: %d script calls for %d publishes"):format(calls, CONNS * PER))

    -- the other node's subscribers get every event with the returned id,
    -- ids strictly increasing
    local n_other = 0
    for _, ch in pairs(sent) do if ch == "other" then n_other = n_other + 1 end end
    local want = { big = CONNS * PER - n_other, other = n_other }
    for ch, s in pairs({ big = sb, other = so }) do
      evs[ch] = s:events_until(want[ch], 20)
      assert.equal(want[ch], #evs[ch], "events missing on " .. ch)
      local last = 0
      for _, ev in ipairs(evs[ch]) do
        assert.equal(ch, sent[ev.data], "an event on the wrong channel: " .. ev.data)
        assert.equal(returned[ev.data], ev.id, "the subscriber's id is not the handler's for " .. ev.data)
        assert.truthy(tonumber(ev.id) > last, "ids out of order on " .. ch)
        last = tonumber(ev.id)
      end
    end
    sb:close()
    so:close()

    -- resume from the first: the history gives all the rest, exactly
    local first = evs.big[1]
    local sr = b:stream("/s?ch=big", { last_event_id = first.id })
    local replay = sr:events_until(want.big - 1, 20)
    assert.equal(want.big - 1, #replay)
    for i, ev in ipairs(replay) do
      assert.equal(evs.big[i + 1].id, ev.id)
      assert.equal(evs.big[i + 1].data, ev.data)
    end
    assert.is_nil(sr:next(0.3), "more than the history held")
    sr:close()
    -- the stream's prev chain: each entry names the one before it
    local entries = stream_entries(r, "big")
    assert.equal(want.big, #entries)
    for i = 2, #entries do assert.equal(entries[i - 1].id, entries[i].prev) end
  end)

  it("channels with a history of 5, published to alternately in bursts: each keeps exactly its last 5, a resume within them gets exactly the rest, an older one the reset", function()
    local sa = a:stream("/s?ch=short.t,short.u")
    settle()
    local calls0 = script_calls(r)
    local N = 400
    assert.equal(202, a:post("/burst?ch=short.t,short.u&n=" .. N .. "&tag=x").status)
    local evs = sa:events_until(N, 20)
    assert.equal(N, #evs, "the burst never came back from Redis")
    sa:close()
    local calls = script_calls(r) - calls0
    assert.truthy(calls < N, ("no batching: %d script calls for %d publishes"):format(calls, N))
    local ids = { ["short.t"] = {}, ["short.u"] = {} }
    local last = 0
    for i, ev in ipairs(evs) do
      assert.equal("x " .. i, ev.data, "events out of order")
      assert.truthy(tonumber(ev.id) > last, "ids out of order")
      last = tonumber(ev.id)
      local ch = i % 2 == 1 and "short.t" or "short.u"
      table.insert(ids[ch], ev)
    end
    for ch, list in pairs(ids) do
      local entries = stream_entries(r, ch)
      assert.equal(5, #entries, ch .. " does not keep exactly 5")
      for k = 1, 5 do
        local ev = list[#list - 5 + k]
        assert.equal(ev.id, entries[k].id)
        assert.equal(ev.data, entries[k].data)
        assert.equal(list[#list - 6 + k].id, entries[k].prev, "the prev chain is broken on " .. ch)
      end
      -- from the id just before the last 5: exactly those 5
      local s = b:stream("/s?ch=" .. ch, { last_event_id = list[#list - 5].id })
      local got = s:events_until(5, 5)
      assert.equal(5, #got)
      for k = 1, 5 do
        assert.not_equal("sluice-reset", got[k].event)
        assert.equal(list[#list - 5 + k].id, got[k].id)
      end
      assert.is_nil(s:next(0.3), "more than the last 5")
      s:close()
      -- from one before that: trimmed away, the reset
      s = b:stream("/s?ch=" .. ch, { last_event_id = list[#list - 6].id })
      local reset = assert(s:next(5), "no reset event")
      assert.equal("sluice-reset", reset.event)
      assert.equal("history-expired", cjson.decode(reset.data).reason)
      s:close()
    end
  end)
end)
