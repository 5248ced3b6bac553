-- Cluster mode (--redis): sluice.disconnect{...} on one node ends the
-- matching streams of every node. The node asked ends its own at once
-- and publishes the request on the control channel (<prefix>ctl); every
-- other node applies it on all its workers. Redis down: the node's own
-- streams still end, the call neither hangs nor raises, and it says the
-- other nodes were not told.
local cluster = require "cluster"
local pinned = require "pinned"
local client = require "client"
local socket = require "socket"
local admin = require "admin"

-- /s?user=u&ch=a (cluster.app's stream tags the user)
local APP = cluster.app { routes = [[
app:get("/who", function() return 200, tostring(sluice.worker_id()) end)
app:post("/kick", function(req)
  local spec = {}
  for k, v in pairs(req.query) do spec[k] = v end
  local n, told = sluice.disconnect(spec)
  return 200, { n = n, told = told }
end)
]] }

local json, stats = cluster.json, cluster.stats

local function kick(srv, query)
  local t0 = socket.gettime()
  local r = client.request(srv.port, "POST", "/kick?" .. query)
  local took = socket.gettime() - t0
  assert.equal(200, r.status, r.body)
  return json(r.body), took
end

local function open(srv, wid, path)
  local s = pinned.open(srv.port, wid, path)
  assert.equal(200, s.status)
  assert.is_true(pinned.wait_text(s, "retry:"), "the stream's head never came")
  return s
end

local function ended(s, reason, who)
  local text = 'event: sluice-disconnect\ndata: {"reason":"' .. reason .. '"}\n'
  assert.is_true(pinned.wait_text(s, text, 5), who .. " got no disconnect event: " .. s.text)
  assert.is_true(pinned.wait_closed(s, 5), who .. " was not closed")
end

-- Until the nodes' subscriber connections have subscribed (the control
-- channel and the streams' channels).
local function settle() cluster.settle(0.4) end

describe("#cluster sluice.disconnect", function()
  local r, a, b
  local args = { nil, { "--workers", "2", "--admin-listen", "127.0.0.1:0" } }
  if not cluster.nodes({ app = APP, tag = "d", args = args }, function(c) r, a, b = c.r, c.a, c.b end) then
    return
  end

  it("ends the user's streams on every node and every worker, with the reason; others stay", function()
    local a_u1 = open(a, nil, "/s?user=u1")
    local b0_u1 = open(b, 0, "/s?user=u1")
    local b1_u1 = open(b, 1, "/s?user=u1")
    local b_u2 = open(b, 1, "/s?user=u2")
    settle()
    local before = stats(b).redis
    local res = kick(a, "user=u1&reason=revoked")
    assert.equal(1, res.n)        -- the streams found on this node
    ended(a_u1, "revoked", "node A's stream")
    ended(b0_u1, "revoked", "node B worker 0's stream")
    ended(b1_u1, "revoked", "node B worker 1's stream")
    assert.is_true(res.told)      -- the other nodes were told through Redis
    -- u2 keeps streaming.
    assert.equal(202, a:post("/pub/a", "after").status)
    assert.is_true(pinned.wait_text(b_u2, "data: after"), "u2's stream: " .. b_u2.text)
    assert.is_nil(b_u2.text:find("sluice-disconnect", 1, true))
    assert.is_false(b_u2.closed == true)
    -- Counted: sent by A, applied by B, not by A (its own comes back to it).
    local sa, sb = stats(a).redis, stats(b).redis
    assert.truthy(sa.control_sent >= 1, "node A sent none")
    assert.equal(before.control_applied + 1, sb.control_applied)
    assert.equal(0, sa.control_applied)
    assert.equal(0, sb.control_failed)
    assert.equal(2, stats(b).admin_disconnected)
    local m = admin.get(admin.port(b), "/metrics")
    assert.equal(200, m.status)
    assert.equal(sb.control_applied,
                 admin.sample(m.body, 'sluice_redis_control_messages_total{result="applied"}'))
    assert.equal(0, admin.sample(m.body, 'sluice_redis_control_messages_total{result="failed"}'))
    assert.truthy(b:log():find("a disconnect from node", 1, true))
    pinned.close(b_u2)
  end)

  it("matches the channel criterion on the other node too", function()
    local bx = open(b, nil, "/s?user=u3&ch=x")
    local by = open(b, nil, "/s?user=u3&ch=y")
    local ax = open(a, nil, "/s?user=u3&ch=x")
    settle()
    local res = kick(b, "user=u3&channel=x&reason=moved")
    assert.equal(1, res.n)
    ended(bx, "moved", "node B's x stream")
    ended(ax, "moved", "node A's x stream")
    assert.is_true(res.told)
    assert.equal(202, a:post("/pub/y", "still").status)
    assert.is_true(pinned.wait_text(by, "data: still"), "the y stream: " .. by.text)
    assert.is_nil(by.text:find("sluice-disconnect", 1, true))
    pinned.close(by)
  end)

  it("a control message this node cannot read is ignored and counted, not applied", function()
    local bz = open(b, nil, "/s?user=z")
    settle()
    local before = stats(b).redis
    r:cli("PUBLISH d" .. r.port .. ":ctl 'sluice-ctl 2 other disconnect\n1:x'")
    r:cli("PUBLISH d" .. r.port .. ":ctl 'sluice-ctl 1 other disconnect\n3:t:u,1:z,5:event,99:x,'")
    local deadline = socket.gettime() + 5
    local after
    repeat
      after = stats(b).redis
      if after.control_failed >= before.control_failed + 2 then break end
      socket.sleep(0.05)
    until socket.gettime() > deadline
    assert.equal(before.control_failed + 2, after.control_failed)
    assert.equal(before.control_applied, after.control_applied)
    assert.is_false(pinned.wait_closed(bz, 0.3))
    -- A well-formed one from another node is applied.
    r:cli("PUBLISH d" .. r.port .. ":ctl 'sluice-ctl 1 other disconnect\n6:t:user,1:z,5:event,4:gone,4:data,2:{},'")
    assert.is_true(pinned.wait_text(bz, "event: gone\ndata: {}\n"), bz.text)
    assert.is_true(pinned.wait_closed(bz, 5))
  end)
end)

describe("#cluster sluice.disconnect with Redis down", function()
  local r, a, b
  if not cluster.nodes({ app = APP, tag = "d" }, function(c) r, a, b = c.r, c.a, c.b end) then return end

  it("still ends this node's streams, promptly, and says the others were not told", function()
    local a_u1 = open(a, nil, "/s?user=u1")
    local b_u1 = open(b, nil, "/s?user=u1")
    settle()
    r:kill()
    assert(a:wait_log("redis: unavailable", 10, true), "node A never noticed Redis went")
    local res, took = kick(a, "user=u1&reason=revoked")
    assert.truthy(took < 1, ("the call took %.2f s"):format(took))
    assert.equal(1, res.n)
    assert.is_false(res.told)
    ended(a_u1, "revoked", "node A's stream")
    assert.truthy(a:log():find("only this node's streams were disconnected", 1, true))
    assert.truthy(stats(a).redis.control_failed >= 1)
    -- Not replayed: node B was never told, its stream stays.
    assert.is_false(pinned.wait_closed(b_u1, 0.3))
    pinned.close(b_u1)
  end)
end)
