-- The in-process mode (testing.app) against the real server
-- (testing.server): one scripted sequence of requests, streams, publishes
-- and clock moves runs both ways on examples/orders and examples/rollout,
-- and every answer (status, every header, body) and every delivered event
-- (event, data, retry, the order of ids) must be the same. Event ids
-- differ between runs (they start from the boot time), so they are
-- compared as their order of first appearance. Then: the same spec run
-- against a changed app fails, so it would catch a drift.
local testing = require "sluice.testing"
local socket = require "socket"
local cjson = require "cjson"

local ROOT = testing.ROOT
local SECRET = "diff-spec-secret-0123456789abcdef"

local function token(sub, role, expires_in)
  return testing.jwt { alg = "HS256", secret = SECRET, expires_in = expires_in or 600,
                       claims = { sub = sub, role = role, aud = "orders" } }
end
local function bearer(t) return { Authorization = "Bearer " .. t } end

-- ---- the two ways ------------------------------------------------------------

-- What a scenario asks of a mode: its target, and how to let time pass.
local function server_mode(apps, env)
  local srv = testing.server { apps = apps, env = env }
  return {
    name = "server", target = srv,
    next = function(s) return s:next(3) end,
    nothing = function(s) return s:next(0.3) end,
    -- real timers: the next event waits for them
    pass = function() end,
    ended = function(s, seconds) return s:wait_closed(seconds + 3) end,
    stop = function() srv:stop() end,
  }
end

local function inprocess_mode(apps, env)
  local app = testing.app { apps = apps, env = env }
  return {
    name = "in-process", target = app,
    next = function(s) return s:next() end,
    nothing = function(s) return s:next() end,
    pass = function(seconds) app:advance(seconds) end,
    ended = function(s, seconds) app:advance(seconds); return s:wait_closed() end,
    stop = function() app:close() end,
  }
end

-- ---- transcripts ---------------------------------------------------------------

-- JSON with its keys sorted: an app's tables are encoded in pairs()
-- order, which is no order.
local function canonical(v)
  if type(v) ~= "table" then return cjson.encode(v) end
  if #v > 0 or next(v) == nil then
    local parts = {}
    for i = 1, #v do parts[i] = canonical(v[i]) end
    return "[" .. table.concat(parts, ",") .. "]"
  end
  local keys, parts = {}, {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  for _, k in ipairs(keys) do parts[#parts + 1] = cjson.encode(k) .. ":" .. canonical(v[k]) end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function canonical_text(s)
  if type(s) ~= "string" then return s end
  local ok, v = pcall(cjson.decode, s)
  if ok and type(v) == "table" then return canonical(v) end
  return s
end

-- Ids as their order of first appearance, wherever they appear (event
-- ids, the id in a publish answer, last_event_id in a reset notice); the
-- clock's seconds as <time>.
local function normalizer()
  local ords, n = {}, 0
  local function ord(id)
    if not ords[id] then n = n + 1; ords[id] = "#" .. n end
    return ords[id]
  end
  local function norm(s)
    if type(s) ~= "string" then return s end
    s = canonical_text(s)
    s = s:gsub("%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d%d+", ord)   -- ids: 16+ digits
    return (s:gsub("%d%d%d%d%d%d%d%d%d%d", "<time>"))        -- epoch seconds
  end
  return norm, ord
end

local function transcript()
  local t = { lines = {} }
  t.norm, t.ord = normalizer()
  function t:add(...) self.lines[#self.lines + 1] = { ... } end
  function t:answer(label, r)
    local headers = {}
    for _, h in ipairs(r.header_list) do
      -- Request and trace ids are random on both sides: present, not equal.
      local name = h[1]:lower()
      local v = (name == "x-request-id" or name == "traceparent") and "<id>" or self.norm(h[2])
      headers[#headers + 1] = h[1] .. ": " .. v
    end
    table.sort(headers)   -- a handler's headers are a Lua table: no order
    self:add(label, r.status, table.concat(headers, "\n"), self.norm(r.body or ""))
  end
  function t:event(label, ev)
    if not ev then return self:add(label, "no event") end
    self:add(label, ev.event, self.norm(ev.data), ev.id and self.ord(ev.id) or "no id")
  end
  return t
end

-- The first line where two transcripts differ, for the failure message.
local function first_difference(a, b)
  for i = 1, math.max(#a.lines, #b.lines) do
    local x, y = a.lines[i], b.lines[i]
    local sx = x and table.concat(x, " | ") or "(nothing)"
    local sy = y and table.concat(y, " | ") or "(nothing)"
    if sx ~= sy then return ("line %d:\n  server:     %s\n  in-process: %s"):format(i, sx, sy) end
  end
end

-- ---- the scenarios ------------------------------------------------------------

local function orders(mode)
  local t, srv = transcript(), mode.target
  local owner, support, backend = token("42", "customer"), token("agent-7", "support"), token("billing", "backend")
  t:answer("unknown path", srv:get("/nope"))
  t:answer("no token", srv:stream("/orders/42"))
  t:answer("wrong audience", srv:stream("/orders/42", { query = { access_token =
    testing.jwt { secret = SECRET, claims = { sub = "42", aud = "billing" } } } }))
  t:answer("forged", srv:stream("/orders/42", { headers = bearer(token("42") .. "x") }))
  t:answer("another user", srv:stream("/orders/43", { headers = bearer(owner) }))
  t:answer("preflight", srv:request { method = "OPTIONS", path = "/orders/42", headers = {
    Origin = "https://shop.example.com", ["Access-Control-Request-Method"] = "GET" } })

  local o = srv:stream("/orders/42", { cookies = { access_token = owner },
                                       headers = { Origin = "https://shop.example.com" } })
  local s = srv:stream("/orders/42", { headers = bearer(support) })
  t:answer("owner stream", o)
  t:answer("support stream", s)

  t:answer("publish", srv:post("/orders/42/events",
    { status = "paid", customer = { phone = "13812345678", email = "li.wei@example.com" },
      payment = { card = "4111111111111111" } }, { headers = bearer(backend) }))
  t:event("owner sees", mode.next(o))
  t:event("support sees", mode.next(s))
  t:add("retry", tostring(o.retry), tostring(s.retry))
  t:answer("not JSON", srv:post("/orders/42/events", "{", { headers = bearer(owner) }))
  t:answer("customer's own", srv:post("/orders/42/events", { status = "cancel?" }, { headers = bearer(owner) }))
  t:event("owner sees", mode.next(o))
  t:event("support sees", mode.next(s))
  t:event("nothing more", mode.nothing(o))

  -- resume: what the owner missed while away
  local last = o.last_event_id
  o:close()
  t:answer("while away", srv:post("/orders/42/events", { status = "shipped" }, { headers = bearer(backend) }))
  local back = srv:stream("/orders/42", { headers = bearer(owner), last_event_id = last })
  t:event("resumed", mode.next(back))
  t:event("support live", mode.next(s))
  local lost = srv:stream("/orders/42", { headers = bearer(owner), last_event_id = "12" })
  t:event("unknown id", mode.next(lost))

  -- a token that expires ends the stream, with a retry hint
  local short = srv:stream("/orders/42", { headers = bearer(token("42", "customer", 1)) })
  t:add("expiry ends it", tostring(mode.ended(short, 2)), tostring(short.retry),
        tostring(short.comments[#short.comments]))
  for _, x in ipairs { s, back, lost, short } do x:close() end
  return t
end

local function rollout(mode)
  local t, srv = transcript(), mode.target
  local g = srv:stream("/feed", { headers = { ["X-Traffic-Color"] = "green" } })
  t:answer("green by header", g)
  t:event("hello", mode.next(g))
  local users = {}
  for i = 1, 30 do
    local s = srv:stream("/feed", { query = { user = "user-" .. i } })
    users[#users + 1] = s.headers["x-variant"]
    s:close()
  end
  t:add("variants of 30 users", table.concat(users, ","))
  local stable = srv:stream("/feed", { query = { user = "user-1" } })
  t:answer("stable", stable)
  mode.pass(1)
  -- the timer's tick through each variant's view (ids: timing differs)
  local a, b = mode.next(g), mode.next(stable)
  t:add("tick, green", a and a.event, a and t.norm(a.data))
  t:add("tick, stable", b and b.event, b and t.norm(b.data))
  t:answer("counters", srv:get("/feed/stats"))
  g:close()
  stable:close()
  return t
end

-- ---- the comparison -------------------------------------------------------------

local function both(apps, env, scenario)
  local m1 = server_mode(apps, env)
  local ok1, t1 = pcall(scenario, m1)
  m1.stop()
  assert(ok1, t1)
  local m2 = inprocess_mode(apps, env)
  local ok2, t2 = pcall(scenario, m2)
  m2.stop()
  assert(ok2, t2)
  return t1, t2
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

describe("the in-process mode against the real server", function()
  it("gives examples/orders the same answers and events", function()
    local t1, t2 = both(ROOT .. "/examples/orders", { JWT_SECRET = SECRET }, orders)
    assert.is_true(#t1.lines > 20)
    assert.is_nil(first_difference(t1, t2))
  end)

  it("gives examples/rollout the same answers, variants, views and ticks", function()
    local t1, t2 = both(ROOT .. "/examples/rollout", nil, rollout)
    assert.is_nil(first_difference(t1, t2))
  end)

  it("sends the ids of each stream in increasing order both ways", function()
    for _, make in ipairs { server_mode, inprocess_mode } do
      local m = make(ROOT .. "/examples/orders", { JWT_SECRET = SECRET })
      local s = m.target:stream("/orders/7", { headers = bearer(token("7", "customer")) })
      for i = 1, 5 do
        m.target:post("/orders/7/events", { n = i }, { headers = bearer(token("b", "backend")) })
      end
      local prev = 0
      for _ = 1, 5 do
        local ev = assert(m.next(s))
        assert.is_true(tonumber(ev.id) > prev, m.name)
        prev = tonumber(ev.id)
      end
      s:close()
      m.stop()
    end
  end)

  it("catches a difference: the same scenario on a changed app differs", function()
    local src = read(ROOT .. "/examples/orders/orders.lua")
    local broken = src:gsub('{ "customer%.phone", "phone" }', '{ "customer.phone", "redact" }')
    assert.are_not.equal(src, broken)
    local m1 = inprocess_mode(ROOT .. "/examples/orders", { JWT_SECRET = SECRET })
    local t1 = orders(m1)
    m1.stop()
    local m2 = inprocess_mode({ ["orders.lua"] = broken }, { JWT_SECRET = SECRET })
    local t2 = orders(m2)
    m2.stop()
    local diff = first_difference(t1, t2)
    assert.is_not_nil(diff)
    assert.truthy(diff:find("support sees", 1, true), diff)
  end)
end)

-- (socket is required so a missing luasocket fails here, not mid-scenario)
assert(socket.gettime)
