-- Cluster mode (--redis) as operators see it: readiness follows Redis,
-- app timers run once per service. Each describe starts its own
-- redis-server (spec/helpers/redis.lua).
local cluster = require "cluster"
local raw = require "raw"
local socket = require "socket"
local cjson = require "cjson"

local admin = require "admin"
local admin_get = admin.get

describe("#cluster readiness", function()
  local r, srv
  local args = { { "--admin-listen", "127.0.0.1:0" } }
  if not cluster.nodes({ tag = "o", nodes = 1, args = args }, function(c) r, srv = c.r, c.a end) then
    return
  end

  it("/readyz says 503 while Redis is unreachable and 200 once it is back", function()
    local port = admin.port(srv)
    assert.truthy(raw.eventually(function() return admin_get(port, "/readyz").status == 200 end, 10),
                  "never ready with Redis up")
    r:kill()
    local down = raw.eventually(function()
      local x = admin_get(port, "/readyz")
      return x.status == 503 and x
    end, 10)
    assert.truthy(down, "still ready with Redis gone")
    assert.equal("cluster not reachable\n", down.body)
    r:start()
    assert.truthy(raw.eventually(function() return admin_get(port, "/readyz").status == 200 end, 10),
                  "not ready again after Redis came back")
  end)
end)

describe("#cluster Redis back empty", function()
  local r, a, b
  if not cluster.nodes({ tag = "e" }, function(c) r, a, b = c.r, c.a, c.b end) then return end

  it("sends open streams the reset event (history-lost) and keeps new ids above the old ones", function()
    local sb = b:stream("/s?ch=e1")
    socket.sleep(0.3)
    assert.equal(202, a:post("/pub/e1", "before").status)
    local first = assert(sb:next(5), "nothing before the restart")
    assert.equal("before", first.data)
    r:restart_empty()
    local reset = assert(sb:next(15), "no reset after Redis came back empty")
    assert.equal("sluice-reset", reset.event)
    local body = cjson.decode(reset.data)
    assert.equal("e1", body.channel)
    assert.equal("history-lost", body.reason)
    assert.equal(first.id, body.last_event_id)
    local deadline = socket.gettime() + 15
    local status
    repeat
      status = a:post("/pub/e1", "after").status
      if status ~= 202 then socket.sleep(0.2) end
    until status == 202 or socket.gettime() > deadline
    assert.equal(202, status)
    local ev = assert(sb:next(10), "nothing after the reset")
    assert.equal("after", ev.data)
    assert.truthy(tonumber(ev.id) > tonumber(first.id), ev.id .. " <= " .. first.id)
    assert.falsy(sb.ended)
    sb:close()
  end)
end)

describe("#cluster app timers", function()
  local TICK_APP = cluster.app { routes = [[
app:every(0.2, function() sluice.publish("ticks", { data = "tick" }) end)
]] }
  local a, b, sb
  if not cluster.nodes({ tag = "l", app = TICK_APP }, function(c) a, b = c.a, c.b end) then return end
  teardown(function()
    if sb then sb:close() end
  end)

  -- Ticks seen by s over secs seconds.
  local function count(s, secs)
    local n, deadline = 0, socket.gettime() + secs
    while socket.gettime() < deadline do
      local ev = s:next(math.max(0.05, deadline - socket.gettime()))
      if ev and ev.data == "tick" then n = n + 1 end
    end
    return n
  end

  it("run on one node of two, and on the other within seconds once that one is killed", function()
    local holder = raw.eventually(function()
      if a:log():find("runs the app timers", 1, true) then return "a" end
      if b:log():find("runs the app timers", 1, true) then return "b" end
    end, 10)
    assert.truthy(holder, "no node took the timer lease")
    local other = holder == "a" and b or a
    sb = other:stream("/s?ch=ticks")
    socket.sleep(0.5)
    -- 0.2 s apart: ~10 ticks in 2 s from one node, ~20 if both ran them.
    local n = count(sb, 2)
    assert.truthy(n >= 5 and n <= 14, "ticks in 2 s: " .. n)
    local victim = holder == "a" and a or b
    os.execute(("kill -9 %d"):format(victim.pid))
    local back = raw.eventually(function()
      local ev = sb:next(0.5)
      return ev and ev.data == "tick"
    end, 10)
    assert.truthy(back, "no tick from the other node within 10 s of killing the holder")
    n = count(sb, 2)
    assert.truthy(n >= 5 and n <= 14, "ticks in 2 s after the takeover: " .. n)
  end)
end)

describe("#cluster channel records", function()
  local r, srv
  if not cluster.nodes({ tag = "c", nodes = 1 }, function(c) r, srv = c.r, c.a end) then return end

  local function redis_stats()
    return assert(cluster.stats(srv).redis, "no redis key in sluice.stats()")
  end

  it("are released once a channel has no subscriber left on the node: 200 channels come and go, none kept", function()
    local streams = {}
    for i = 0, 9 do
      local names = {}
      for j = 1, 20 do names[#names + 1] = "c" .. (i * 20 + j) end
      streams[#streams + 1] = srv:stream("/s?ch=" .. table.concat(names, ","))
    end
    assert.truthy(raw.eventually(function() return redis_stats().channels == 200 end, 5),
                  "not 200 channels followed: " .. redis_stats().channels)
    for _, s in ipairs(streams) do s:close() end
    assert.truthy(raw.eventually(function() return redis_stats().channels == 0 end, 5),
                  "channel records kept after their last subscriber left: " .. redis_stats().channels)
    assert.equal("0", r:cli(("PUBSUB NUMSUB c%d:live:c1"):format(r.port)):match("(%d+)$"))
    -- followed again from scratch
    local s = srv:stream("/s?ch=c1")
    assert.truthy(raw.eventually(function() return redis_stats().channels == 1 end, 5))
    socket.sleep(0.3)
    assert.equal(202, srv:post("/pub/c1", "again").status)
    local ev = assert(s:next(5), "nothing on a channel followed again")
    assert.equal("again", ev.data)
    s:close()
  end)
end)
