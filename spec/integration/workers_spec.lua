-- Several workers (--workers N) in one process: a publish on any worker
-- reaches every subscriber on every worker once, in one id order; history
-- is the process's, so a client cut on one worker resumes on another; app
-- timers tick once per process; reload reaches every worker without a
-- drop; stats count the whole process.
--
-- Which worker serves a connection is up to the kernel: the test app
-- names its worker (sluice.worker_id()) in a header of every answer, and
-- the specs open connections until they land where they need to.
local multi = require "multi"
local socket = require "socket"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()

local function who() return { ["X-Worker"] = tostring(sluice.worker_id()) } end

-- /s?ch=a,b subscribes to every channel named
app:stream("/s", function(req, s)
  s:header("X-Worker", tostring(sluice.worker_id()))
  for name in (req.query.ch or "a"):gmatch("[^,]+") do s:subscribe(name) end
end)

app:post("/pub/:ch", function(req)
  local id, n = sluice.publish(req.params.ch, { data = req.body })
  return 200, id .. " " .. n .. " " .. sluice.worker_id(), who()
end)

app:get("/who", function() return 200, tostring(sluice.worker_id()), who() end)

app:get("/stats", function()
  local st = sluice.stats()
  st.runtime = nil
  st.subscribers_a = sluice.subscribers("a")
  return 200, st, who()
end)

app:get("/version", function() return 200, "v1", who() end)

-- once per process by default; tick_all on every worker
app:every(0.1, function() sluice.publish("tick", { data = tostring(sluice.worker_id()) }) end)
app:every(0.1, function() sluice.publish("tick_all", { data = tostring(sluice.worker_id()) }) end,
          { every_worker = true })

return app
]]

local gettime = socket.gettime

local function start(workers, extra)
  local args = { "--no-watch", "--heartbeat", "0", "--workers", tostring(workers) }
  for _, a in ipairs(extra or {}) do args[#args + 1] = a end
  return multi.start { apps = { ["app.lua"] = APP }, args = args }
end

-- A keep-alive connection that knows which worker serves it.
local function connect(port)
  local c = multi.connect(port, { timeout = 20 })
  assert(c:send(multi.build("GET", "/who")))
  local status, headers = multi.read_head(c)
  assert(status == 200, "GET /who: " .. tostring(status))
  local len = tonumber(headers["content-length"])
  local body = assert(c:receive(len))
  return { sock = c, worker = tonumber(body) }
end

-- Opens count connections spread over at least `want` workers (the
-- kernel decides; more are opened, bounded, until the spread is there).
local function spread_connections(port, count, want)
  local conns, seen, nseen = {}, {}, 0
  for _ = 1, 200 do
    local c = connect(port)
    local room = count - #conns
    if not seen[c.worker] or room > want - nseen then
      conns[#conns + 1] = c
      if not seen[c.worker] then seen[c.worker], nseen = true, nseen + 1 end
    else
      c.sock:close()
    end
    if #conns == count and nseen >= want then return conns, nseen end
  end
  error(("connections landed on %d worker(s) only"):format(nseen))
end

-- Reads one stream's bytes until `count` ids arrived or timeout; returns
-- the ids (numbers) in order.
local function read_ids(s, count, timeout)
  local ids = {}
  local deadline = gettime() + timeout
  while #ids < count and gettime() < deadline do
    local ev = s:next(math.max(0, deadline - gettime()))
    if not ev then break end
    if ev.id then ids[#ids + 1] = tonumber(ev.id) end
  end
  return ids
end

-- The same, faster for thousands of events: the ids straight from the
-- socket's bytes (the test's own events: no "id: " inside their data).
-- For a stream nothing has been read from since its head.
local function scan_ids(s, count, timeout)
  local ids, carry, closed = {}, "", false
  local c = s.sock
  local deadline = gettime() + timeout
  while #ids < count do
    local left = deadline - gettime()
    if left <= 0 then break end
    c:settimeout(0)
    local data, err, partial = c:receive(262144)
    data = data or partial or ""
    if #data == 0 and err == "timeout" then
      c:settimeout(left)
      data, err, partial = c:receive(1)
      data = data or partial or ""
      if #data > 0 then
        c:settimeout(0)
        local more, _, p2 = c:receive(262144)
        data = data .. (more or p2 or "")
      end
    end
    local text = carry .. data
    local cut = text:match(".*()\n") or 0
    for id in text:sub(1, cut):gmatch("id: (%d+)\n") do ids[#ids + 1] = tonumber(id) end
    carry = text:sub(cut + 1)
    if err == "closed" then closed = true; break end
  end
  return ids, closed
end

local function open_stream(port, ch, headers)
  local s = multi.open(port, "/s?ch=" .. ch, headers, { timeout = 10 })
  assert.equal(200, s.status)
  s.worker = tonumber(s.headers["x-worker"])
  return s
end

describe("workers", function()
  for _, case in ipairs { { 2 }, { 4 }, { 2, "--reuseport" } } do
    local n, mode = case[1], case[2]
    it(("%d workers%s: 10,000 events over 8 publishers reach 500 subscribers of 2 channels once, in order")
       :format(n, mode and " (" .. mode .. ")" or ""), function()
      local srv = start(n, { mode })
      local ok, err = pcall(function()
        -- 500 subscribers: a, b, and every 10th both (merged across channels)
        local streams, chans = {}, {}
        for i = 1, 500 do
          chans[i] = i % 10 == 0 and "a,b" or (i % 2 == 0 and "a" or "b")
          streams[i] = multi.open(srv.port, "/s?ch=" .. chans[i], nil, { no_head = true, timeout = 10 })
        end
        local on = {}
        for i = 1, 500 do
          streams[i]:finish_open(10)
          assert.equal(200, streams[i].status)
          local w = tonumber(streams[i].headers["x-worker"])
          on[w] = (on[w] or 0) + 1
        end
        local nworkers_subs = 0
        for _ in pairs(on) do nworkers_subs = nworkers_subs + 1 end
        assert.is_true(nworkers_subs >= 2, "the subscribers all landed on one worker")

        -- 8 publishers on at least 2 workers, 1,250 pipelined publishes each
        local pubs, nw = spread_connections(srv.port, 8, 2)
        assert.is_true(nw >= 2)
        for p, c in ipairs(pubs) do
          local parts = {}
          for k = 1, 1250 do
            local ch = (k + p) % 2 == 0 and "a" or "b"
            parts[k] = multi.build("POST", "/pub/" .. ch, {}, p .. "-" .. k)
          end
          assert(c.sock:send(table.concat(parts)))
        end
        local want = { a = {}, b = {} }
        local published_by = {}
        for p, c in ipairs(pubs) do
          for k = 1, 1250 do
            local status, headers = multi.read_head(c.sock)
            assert.equal(200, status, "publish " .. p .. "-" .. k)
            local body = assert(c.sock:receive(tonumber(headers["content-length"])))
            local id, _, w = body:match("^(%d+) (%d+) (%d+)$")
            local ch = (k + p) % 2 == 0 and "a" or "b"
            want[ch][#want[ch] + 1] = tonumber(id)
            published_by[tonumber(w)] = true
          end
          c.sock:close()
        end
        local npub = 0
        for _ in pairs(published_by) do npub = npub + 1 end
        assert.is_true(npub >= 2, "all publishes ran on one worker")
        table.sort(want.a)
        table.sort(want.b)
        local both = {}
        for _, id in ipairs(want.a) do both[#both + 1] = id end
        for _, id in ipairs(want.b) do both[#both + 1] = id end
        table.sort(both)
        local expect = { a = want.a, b = want.b, ["a,b"] = both }

        for i = 1, 500 do
          local w = expect[chans[i]]
          local t0 = gettime()
          local got, closed = scan_ids(streams[i], #w, 20)
          streams[i]:close()
          if #got ~= #w then
            -- Which failure: the server ended the stream, or it went quiet.
            error(("stream %d (%s, worker %s) got %d of %d events (last id %s; %s after %.1f s)")
                  :format(i, chans[i], streams[i].headers["x-worker"], #got, #w,
                          tostring(got[#got]), closed and "closed by the server" or "still open, silent",
                          gettime() - t0))
          end
          for k = 1, #w do
            if got[k] ~= w[k] then
              error(("stream %d (%s): event %d is id %s, expected %s (ids must strictly increase)")
                    :format(i, chans[i], k, tostring(got[k]), tostring(w[k])))
            end
          end
        end
      end)
      srv:stop()
      assert(ok, err)
    end)
  end

  it("resumes a stream cut on one worker on another, across two channels", function()
    -- --reuseport: the kernel spreads connections over the workers by
    -- their addresses, so a reconnect lands elsewhere about every other
    -- try; on a shared socket an idle machine may hand every one to the
    -- same worker.
    local srv = start(2, { "--reuseport" })
    local ok, err = pcall(function()
      local pub = connect(srv.port)
      local function publish(ch, data)
        assert(pub.sock:send(multi.build("POST", "/pub/" .. ch, {}, data)))
        local status, headers = multi.read_head(pub.sock)
        assert.equal(200, status)
        local body = assert(pub.sock:receive(tonumber(headers["content-length"])))
        return tonumber(body:match("^%d+"))
      end
      local all = {}
      local s = open_stream(srv.port, "a,b")
      local first_worker = s.worker
      for k = 1, 10 do all[#all + 1] = publish(k % 2 == 0 and "a" or "b", "x" .. k) end
      local got = read_ids(s, 10, 5)
      assert.same(all, got)
      local last = got[#got]
      local workers_seen = { [s.worker] = true }
      -- several reconnects, each from the last id it saw, each forced
      -- onto another worker than the one it was cut on
      for round = 1, 4 do
        local cut_on = s.worker
        s:close()
        -- missed while away, on both channels
        local missed = {}
        for k = 1, 6 do
          local id = publish(k % 2 == 0 and "a" or "b", ("r%d-%d"):format(round, k))
          missed[#missed + 1] = id
          all[#all + 1] = id
        end
        local tries = 0
        repeat
          tries = tries + 1
          assert.is_true(tries <= 100, "every reconnect landed on worker " .. cut_on)
          s = open_stream(srv.port, "a,b", { ["Last-Event-ID"] = ("%.0f"):format(last) })
          if s.worker == cut_on then s:close() end
        until s.worker ~= cut_on
        workers_seen[s.worker] = true
        local replay = read_ids(s, #missed, 5)
        assert.same(missed, replay)
        -- then live, after the replay, nothing twice
        local live = publish("a", "live" .. round)
        all[#all + 1] = live
        assert.same({ live }, read_ids(s, 1, 5))
        last = live
      end
      s:close()
      assert.is_truthy(first_worker)
      local n = 0
      for _ in pairs(workers_seen) do n = n + 1 end
      assert.equal(2, n)
      pub.sock:close()
    end)
    srv:stop()
    assert(ok, err)
  end)

  it("runs an app:every(0.1) timer ~10 times a second with 4 workers; every_worker on each", function()
    local srv = start(4)
    local ok, err = pcall(function()
      local once = open_stream(srv.port, "tick")
      local each = open_stream(srv.port, "tick_all")
      local t0 = gettime()
      local ticks, all = {}, {}
      while gettime() - t0 < 2 do
        local ev = once:next(0.05)
        if ev then ticks[#ticks + 1] = ev.data end
        local ev2 = each:next(0.01)
        while ev2 do
          all[#all + 1] = ev2.data
          ev2 = each:next(0)
        end
      end
      -- ~20 in 2 s (a slow machine may miss some); 4 workers ticking would be ~80
      assert.is_true(#ticks >= 10 and #ticks <= 26, ("%d ticks in 2 s"):format(#ticks))
      for _, w in ipairs(ticks) do assert.equal("0", w) end
      local by = {}
      for _, w in ipairs(all) do by[w] = (by[w] or 0) + 1 end
      for w = 0, 3 do
        assert.is_true((by[tostring(w)] or 0) >= 5, ("worker %d ticked %d times"):format(w, by[tostring(w)] or 0))
      end
      once:close()
      each:close()
    end)
    srv:stop()
    assert(ok, err)
  end)

  it("reloads 20 times with 4 workers under 500 streams at 100 events/s: no drop, loss or duplicate", function()
    local srv = start(4)
    local ok, err = pcall(function()
      local streams = {}
      for i = 1, 500 do streams[i] = multi.open(srv.port, "/s?ch=a", nil, { no_head = true, timeout = 10 }) end
      for i = 1, 500 do
        streams[i]:finish_open(10)
        assert.equal(200, streams[i].status)
      end
      local pub = connect(srv.port)
      local ids = {}
      local t0 = gettime()
      local reloads = 0
      for k = 1, 400 do
        assert(pub.sock:send(multi.build("POST", "/pub/a", {}, "e" .. k)))
        local status, headers = multi.read_head(pub.sock)
        assert.equal(200, status)
        local body = assert(pub.sock:receive(tonumber(headers["content-length"])))
        ids[#ids + 1] = tonumber(body:match("^%d+"))
        if k % 20 == 0 then
          srv:signal("HUP")
          reloads = reloads + 1
        end
        -- 100 events/s
        local due = t0 + k * 0.01
        local now = gettime()
        if due > now then socket.sleep(due - now) end
      end
      assert.equal(20, reloads)
      pub.sock:close()
      for i = 1, 500 do
        local got = scan_ids(streams[i], #ids, 10)
        assert.is_false(streams[i].ended and #got < #ids, "stream " .. i .. " was dropped")
        if #got ~= #ids then error(("stream %d got %d of %d events"):format(i, #got, #ids)) end
        for k = 1, #ids do
          if got[k] ~= ids[k] then error(("stream %d: event %d differs"):format(i, k)) end
        end
        streams[i]:close()
      end
      -- every worker reloaded every time
      local log = srv:log()
      local n = 0
      for _ in log:gmatch("SIGHUP: reloading apps") do n = n + 1 end
      assert.equal(20, n)
    end)
    srv:stop()
    assert(ok, err)
  end)

  it("keeps a broken script's previous version in every worker", function()
    local srv = start(4)
    local ok, err = pcall(function()
      local f = assert(io.open(srv.apps .. "/app.lua", "w"))
      f:write("this is not lua (")
      f:close()
      srv:signal("HUP")
      socket.sleep(0.5)
      local seen, nseen = {}, 0
      for _ = 1, 200 do
        local r = multi.request(srv.port, "GET", "/version")
        assert.equal(200, r.status)
        assert.equal("v1", r.body)
        local w = r.headers["x-worker"]
        if not seen[w] then seen[w], nseen = true, nseen + 1 end
        if nseen == 4 then break end
      end
      assert.equal(4, nseen)
    end)
    srv:stop()
    assert(ok, err)
  end)

  it("adds stats up across workers", function()
    local srv = start(4)
    local ok, err = pcall(function()
      local streams, per = {}, {}
      for i = 1, 40 do
        streams[i] = open_stream(srv.port, "a")
        per[streams[i].worker] = (per[streams[i].worker] or 0) + 1
      end
      local nw = 0
      for _ in pairs(per) do nw = nw + 1 end
      assert.is_true(nw >= 2, "the streams all landed on one worker")
      local seen, nseen = {}, 0
      for _ = 1, 200 do
        local r = multi.request(srv.port, "GET", "/stats")
        local st = multi.json(r.body)
        local w = r.headers["x-worker"]
        -- whichever worker answers, the whole process
        assert.equal(40, st.subscriptions)
        assert.equal(40, st.subscribers_a)
        assert.equal(4, #st.workers)
        local conns, strs = 0, 0
        for i, x in ipairs(st.workers) do
          conns = conns + x.connections
          strs = strs + x.streams
          assert.equal(per[i - 1] or 0, x.streams, "streams of worker " .. (i - 1))
        end
        assert.equal(40, strs)
        assert.equal(st.connections, conns)
        assert.is_true(conns >= 41)   -- the streams and this request
        if not seen[w] then seen[w], nseen = true, nseen + 1 end
        if nseen >= 2 then break end
      end
      assert.is_true(nseen >= 2)
      local m = multi.request(srv.port, "GET", "/stats")
      assert.equal(200, m.status)
      for _, s in ipairs(streams) do s:close() end
    end)
    srv:stop()
    assert(ok, err)
  end)
end)
