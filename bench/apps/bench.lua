-- App served by `bench/run`: the routes the load generator drives.
local sluice = require "sluice"
local app = sluice.app()

-- SSE subscription: stream subscribed to one channel
app:stream("/sub/:ch", function(req, s) s:subscribe(req.params.ch) end)

-- same, behind a Lua authorization check (churn-auth measures its cost)
app:stream("/sub-auth/:ch", function(req, s)
  if req.query.token ~= "let-me-in" then return sluice.reject(401) end
  s:subscribe(req.params.ch)
end)

-- publish: the body becomes the event data verbatim
app:post("/pub/:ch", function(req)
  local id, n = sluice.publish(req.params.ch, { data = req.body })
  return 202, { id = id, subscribers = n }
end)

-- burst (bench/run redis-publish-burst): body "N TS"; publishes
-- {"seq":0..N-1,"ts":TS} on the channel from timers, BURST_CHUNK per loop
-- turn. A timer cannot wait for Redis, so each publish is queued (in cluster
-- mode) and the node's Redis path runs without HTTP in it. When the queue
-- is full (nil, "redis unavailable") the chunk stops and the same seq is
-- tried again 1 ms later, for at most 60 s.
local BURST_CHUNK = 1000
app:post("/burst/:ch", function(req)
  local n, ts = req.body:match("^(%d+) (%d+)$")
  n = tonumber(n)
  if not n or n > 10000000 then return 400, "body: N TS\n" end
  local ch, i, give_up = req.params.ch, 0, sluice.now() + 60
  local function step()
    local last = math.min(i + BURST_CHUNK, n)
    while i < last do
      if not sluice.publish(ch, { data = ('{"seq":%d,"ts":%s}'):format(i, ts) }) then
        if sluice.now() < give_up then sluice.after(0.001, step) end
        return
      end
      i = i + 1
    end
    if i < n then sluice.after(0, step) end
  end
  sluice.after(0, step)
  return 202, { events = n, subscribers = sluice.subscribers(ch) }
end)

-- ---- masking (bench/run mask, mask-off) ------------------------------------
-- Two masked views over the loadgen's JSON payload, and two raw views with
-- no rules for the baseline: the same subscribers and payload, no masking.
app:view("support", { mask = { { "phone", "phone" }, { "email", "email" } } })
app:view("partner", { mask = { { "card", "redact" }, { "user", { "hash", salt = "s" } } } })
app:view("support-raw", {})
app:view("partner-raw", {})

app:stream("/sub-view/:view/:ch", function(req, s)
  s:subscribe(req.params.ch, { view = req.params.view })
end)

-- Counters for the runner, as key=value lines: events published, and per
-- view the events transformed and the fields masked (runtime.views).
app:get("/bench/stats", function()
  local st = sluice.stats()
  local views = st.runtime.views or {}
  local events, ops, errors = 0, 0, 0
  local lines = {}
  for _, v in ipairs(views) do
    events, ops, errors = events + v.events, ops + v.mask_ops, errors + v.errors
    lines[#lines + 1] = ("view=%s events=%d mask_ops=%d errors=%d"):format(
      v.key, v.events, v.mask_ops, v.errors)
  end
  table.insert(lines, 1, ("published=%d delivered=%d views=%d view_events=%d mask_ops=%d "
    .. "view_errors=%d lua_memory=%d reloads=%d"):format(st.published, st.delivered, #views,
    events, ops, errors, st.lua_memory, st.runtime.reloads))
  return 200, table.concat(lines, "\n") .. "\n"
end)

-- Connections and streams per worker (bench/run spread): how the kernel
-- spread the accepted connections, one "worker=i connections=n streams=n"
-- line each (i from 0), after a "workers=N" line.
app:get("/bench/workers", function()
  local ws = sluice.stats().workers or {}
  local lines = { ("workers=%d"):format(#ws) }
  for i, x in ipairs(ws) do
    lines[#lines + 1] = ("worker=%d connections=%d streams=%d"):format(i - 1, x.connections, x.streams)
  end
  return 200, table.concat(lines, "\n") .. "\n"
end)

-- Lua memory without what a collection would free, and without compiled
-- traces (LuaJIT's own bounded cache; it grows with traffic, not reloads).
app:get("/bench/memory", function()
  if jit and jit.flush then jit.flush() end
  collectgarbage()
  collectgarbage()
  local st = sluice.stats()
  return 200, ("lua_memory=%d reloads=%d\n"):format(st.lua_memory, st.runtime.reloads)
end)

-- ---- plain handlers (bench/run handler) ------------------------------------
-- /work: a small handler, ~60 Lua lines per request: query parsing, string
-- work, a JSON table. /work-heavy: the same plus a loop of ?n= iterations
-- (the handler scenario asks for 5,000), where compiled code matters more.
local function initials(name)
  local out = {}
  for part in name:gmatch("[^-_. ]+") do
    out[#out + 1] = part:sub(1, 1):upper()
  end
  return table.concat(out)
end

local function vowels(s)
  local n = 0
  for i = 1, #s do
    local c = s:byte(i)
    if c == 97 or c == 101 or c == 105 or c == 111 or c == 117 then n = n + 1 end
  end
  return n
end

local function answer(req)
  local q = req.query
  local name = q.name or "anonymous"
  if #name > 64 then name = name:sub(1, 64) end
  local count = tonumber(q.count) or 4
  if count < 1 then count = 1 elseif count > 16 then count = 16 end
  local tags = {}
  for i = 1, count do
    tags[i] = ("%s-%d"):format(name, i)
  end
  local joined = table.concat(tags, ",")
  return {
    ok = true,
    greeting = "hello, " .. name .. "!",
    initials = initials(name),
    vowels = vowels(name),
    upper = name:upper(),
    tags = tags,
    length = #joined,
    path = req.path,
  }
end

app:get("/work", function(req)
  return 200, answer(req)
end)

app:get("/work-heavy", function(req)
  local body = answer(req)
  local n = tonumber(req.query.n) or 5000
  if n > 1000000 then n = 1000000 end
  local acc, h = 0, 2166136261
  for i = 1, n do
    acc = (acc + i * i) % 1000003
    h = (h * 31 + i) % 4294967296
  end
  body.acc, body.hash = acc, h
  return 200, body
end)

return app
