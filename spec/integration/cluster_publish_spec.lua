-- sluice.publish in cluster mode (--redis) returns what it returns on one
-- node: a plain route's handler waits for Redis and gets the event's id
-- and how far it reached, so an app written for one node runs unchanged on
-- several. Where a publish cannot wait (a coroutine of the script's own,
-- a yield across a C call) it is queued and returns true, 0.
local cjson = require "cjson"
local cluster = require "cluster"
local raw = require "raw"
local socket = require "socket"

local APP = [[
local sluice = require "sluice"
local app = sluice.app()

app:stream("/s", function(req, s) s:subscribe(req.query.ch or "a") end)

-- As in the README's first app.
app:post("/pub/:ch", function(req)
  local id, reached = sluice.publish(req.params.ch, { data = req.body })
  if not id then return 503, reached, { ["Retry-After"] = "1" } end
  return 202, { id = id, reached = reached }
end)

app:post("/twice/:ch", function(req)
  local id1, r1 = sluice.publish(req.params.ch, { data = "first" })
  local id2, r2 = sluice.publish(req.params.ch, { data = "second" })
  return 202, { ids = { id1, id2 }, reached = { r1, r2 } }
end)

-- Where it cannot wait: a coroutine of the script's own, and a yield
-- across a C call (table.sort's comparator). Then a publish that waits.
app:post("/own/:ch", function(req)
  local co = coroutine.create(function()
    local id, reached = sluice.publish(req.params.ch, { data = "in own coroutine" })
    coroutine.yield("mine")
    return id, reached
  end)
  local _, mine = coroutine.resume(co)
  local ok2, id, reached = coroutine.resume(co)
  local sorted = { 3, 1, 2 }
  local in_sort
  table.sort(sorted, function(x, y)
    if not in_sort then in_sort = { sluice.publish(req.params.ch, { data = "in sort" }) } end
    return x < y
  end)
  local after = sluice.publish(req.params.ch, { data = "after" })
  return 202, { mine = mine, ok = ok2, id = tostring(id), reached = reached,
                sort_id = tostring(in_sort[1]), sort_reached = in_sort[2],
                sorted = table.concat(sorted, ","), after = after }
end)

-- After the wait, the handler is still script code like any other: its
-- errors are 500s naming the line, and the CPU budget still stops it.
app:post("/fails/:ch", function(req)
  sluice.publish(req.params.ch, { data = "then fails" })
  error("failed after publishing")
end)

app:post("/loops/:ch", function(req)
  sluice.publish(req.params.ch, { data = "then loops" })
  while true do end
end)

return app
]]

-- Its own app, not cluster.app(): a test names a line of it.
local function nodes(opts, bind)
  opts.app, opts.tag, opts.workers = APP, "p", opts.workers or 1
  return cluster.nodes(opts, bind)
end

local settle = cluster.settle

local function publish(srv, ch, body)
  local res = srv:post("/pub/" .. ch, body)
  assert.equal(202, res.status, res.body)
  return cjson.decode(res.body)
end

local function is_id(v)
  return type(v) == "string" and v:match("^%d+$") ~= nil and tonumber(v) > 1e15
end

local function cluster_specs(workers, quiet)
  local a, b
  if not nodes({ workers = workers, quiet = quiet }, function(c) a, b = c.a, c.b end) then return end

  it("a handler gets the id Redis gave the event; a subscriber on the other node receives it with exactly that id", function()
    local sb = b:stream("/s?ch=x1")
    settle()
    local out = publish(a, "x1", "hello")
    assert.truthy(is_id(out.id), "an id from Redis, got " .. tostring(out.id))
    assert.equal(1, out.reached)   -- one node follows x1: B
    local ev = assert(sb:next(5), "node B's subscriber got nothing")
    assert.equal("hello", ev.data)
    assert.equal(out.id, ev.id)
    sb:close()
  end)

  it("reached counts the nodes that received the live message", function()
    local sa = a:stream("/s?ch=x2")
    local sb = b:stream("/s?ch=x2")
    settle()
    assert.equal(2, publish(b, "x2", "both").reached)
    assert.equal(0, publish(b, "nobody-follows", "none").reached)
    sa:close()
    sb:close()
  end)

  it("ids returned by successive publishes increase, on either node", function()
    local last = 0
    for i = 1, 10 do
      local out = publish(i % 2 == 0 and a or b, "seq", "e" .. i)
      assert.truthy(is_id(out.id), tostring(out.id))
      assert.truthy(tonumber(out.id) > last, ("%s after %.0f"):format(out.id, last))
      last = tonumber(out.id)
    end
  end)

  it("a handler that publishes twice gets both ids, in order, and they are the events' ids", function()
    local sb = b:stream("/s?ch=two")
    settle()
    local res = a:post("/twice/two")
    assert.equal(202, res.status, res.body)
    local out = cjson.decode(res.body)
    assert.truthy(is_id(out.ids[1]) and is_id(out.ids[2]), res.body)
    assert.truthy(tonumber(out.ids[2]) > tonumber(out.ids[1]), res.body)
    local e1, e2 = assert(sb:next(5)), assert(sb:next(5))
    assert.same({ "first", out.ids[1], "second", out.ids[2] }, { e1.data, e1.id, e2.data, e2.id })
    sb:close()
  end)

  it("keeps a connection's next requests in order behind one that waits (keep-alive, pipelined)", function()
    local c = assert(raw.connect(a.port))
    local req1 = raw.request("POST", "/pub/pipe", nil, "one")
    local req2 = raw.request("POST", "/pub/pipe", nil, "two")
    assert(c:send(req1 .. req2))
    local r1 = assert(c:read_response())
    local r2 = assert(c:read_response())
    assert.equal(202, r1.status)
    assert.equal(202, r2.status)
    local i1, i2 = cjson.decode(r1.body).id, cjson.decode(r2.body).id
    assert.truthy(tonumber(i2) > tonumber(i1))
    c:close()
  end)

  it("inside a coroutine of the script's own or across a C call, a publish is queued and returns true, 0; the handler still answers", function()
    local sb = b:stream("/s?ch=own")
    settle()
    local res = a:post("/own/own")
    assert.equal(202, res.status, res.body)
    local out = cjson.decode(res.body)
    assert.equal("mine", out.mine)
    assert.is_true(out.ok)
    assert.equal("true", out.id)
    assert.equal(0, out.reached)
    assert.equal("true", out.sort_id)
    assert.equal(0, out.sort_reached)
    assert.equal("1,2,3", out.sorted)
    assert.truthy(is_id(out.after), tostring(out.after))
    local got = {}
    for _ = 1, 3 do got[#got + 1] = assert(sb:next(5)).data end
    assert.same({ "in own coroutine", "in sort", "after" }, got)
    sb:close()
  end)
end

describe("#cluster sluice.publish returns the id from Redis", function()
  cluster_specs(1)
end)

describe("#cluster sluice.publish returns the id from Redis, 2 workers per node", function()
  cluster_specs(2, true)
end)

describe("#cluster a handler that waited for Redis", function()
  local a
  if not nodes({ nodes = 1, quiet = true }, function(c) a = c.a end) then return end

  it("fails with a 500 and a log line naming the script's line", function()
    local res = a:post("/fails/f")
    assert.equal(500, res.status)
    assert(a:wait_log("app.lua:45: failed after publishing", 5, true), a:log())
    assert.equal(202, a:post("/pub/f", "still serving").status)
  end)

  it("is still stopped by the CPU budget", function()
    local res = a:post("/loops/l", nil, { timeout = 10 })
    assert.equal(500, res.status)
    assert(a:wait_log("exceeded its CPU budget", 5, true), a:log())
    assert.equal(202, a:post("/pub/l", "still serving").status)
  end)
end)

describe("#cluster sluice.publish while Redis goes away", function()
  local r, a
  -- per test: a test leaves Redis killed or stopped (SIGSTOP)
  if not nodes({ nodes = 1, quiet = true, each = true }, function(c) r, a = c.r, c.a end) then return end

  it("a handler waiting for a Redis that is killed gets nil, \"redis unavailable\" (503) at once", function()
    assert.truthy(is_id(publish(a, "k", "before").id))
    -- Stopped: the publish is sent and waits for its answer.
    os.execute(("kill -STOP %d"):format(r.pid))
    local c = assert(raw.connect(a.port))
    assert(c:send(raw.request("POST", "/pub/k", nil, "while stopped")))
    assert.is_nil((c:read_response { timeout = 0.5 }), "answered before Redis did")
    local t0 = socket.gettime()
    r:kill()
    local res = assert(c:read_response { timeout = 4 })
    assert.equal(503, res.status)
    assert.equal("redis unavailable", res.body)
    assert.equal("1", res.headers["retry-after"])
    assert.truthy(socket.gettime() - t0 < 2, "answered only after " .. (socket.gettime() - t0) .. " s")
    c:close()
    -- Known to be down now: refused at once.
    res = a:post("/pub/k", "after")
    assert.equal(503, res.status)
  end)

  it("a Redis that does not answer: the handler gets nil, \"redis unavailable\" after the command timeout, and the node recovers", function()
    assert.truthy(is_id(publish(a, "w", "before").id))
    os.execute(("kill -STOP %d"):format(r.pid))
    local t0 = socket.gettime()
    local res = a:post("/pub/w", "while stopped", { timeout = 12 })
    local waited = socket.gettime() - t0
    assert.equal(503, res.status, res.body)
    assert.equal("redis unavailable", res.body)
    assert.truthy(waited > 3 and waited < 10, "answered after " .. waited .. " s")
    os.execute(("kill -CONT %d"):format(r.pid))
    local ok = raw.eventually(function() return a:post("/pub/w", "after").status == 202 end, 15, 0.2)
    assert.truthy(ok, "no publish went through once Redis answered again")
  end)

  it("a client that goes away while its handler waits: the answer is dropped, the node keeps serving", function()
    assert.truthy(is_id(publish(a, "g", "before").id))
    os.execute(("kill -STOP %d"):format(r.pid))
    local c = assert(raw.connect(a.port))
    assert(c:send(raw.request("POST", "/pub/g", nil, "then gone")))
    socket.sleep(0.3)
    c:reset()
    os.execute(("kill -CONT %d"):format(r.pid))
    local ok = raw.eventually(function()
      local res = a:post("/pub/g", "after")
      return res.status == 202 and is_id(cjson.decode(res.body).id)
    end, 15, 0.2)
    assert.truthy(ok, "the node did not serve publishes after the client left")
    assert.falsy(a:log():find("error", 1, true), a:log())
  end)
end)
