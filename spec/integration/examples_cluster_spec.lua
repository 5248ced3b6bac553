-- examples/cluster/run, as a user starts it (on free loopback ports):
-- Redis, two sluice nodes with --redis and nginx balancing round-robin.
-- Everything below goes through nginx, as a browser's requests would: a
-- stream, publishes that land on both nodes (nginx's X-Upstream header says
-- which), every event once with increasing ids; the node under the stream
-- killed, the reconnect with Last-Event-ID reaching the other node and
-- getting what was published meanwhile; SIGTERM to the script stopping all
-- of it. Pending, with the tool's name, when nginx or redis-server is missing.
local server = require "server"
local client = require "client"
local raw = require "raw"
local socket = require "socket"
local cjson = require "cjson"

local ROOT = os.getenv("SLUICE_ROOT") or "."
local RUN = ROOT .. "/examples/cluster/run"
local BIN = os.getenv("SLUICE_BIN") or (ROOT .. "/sluice")
if BIN:sub(1, 1) ~= "/" then BIN = ROOT .. "/" .. BIN end
local NGINX = os.getenv("NGINX_BIN") or "/usr/sbin/nginx"

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

local function installed(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function listening(port)
  local c = raw.connect(port)
  if c then c:close() end
  return c ~= nil
end

-- Starts the script with its ports (and the binaries under test) in the
-- environment; returns its pid and the file its output goes to.
local function launch(ports)
  local dir = server.tmpdir()
  local out = dir .. "/run.out"
  local env = ("REDIS_PORT=%d NODE_A_PORT=%d NODE_B_PORT=%d NGINX_PORT=%d SLUICE_BIN=%s NGINX_BIN=%s")
              :format(ports.redis, ports.a, ports.b, ports.nginx, q(BIN), q(NGINX))
  local pid = tonumber(server.sh(("%s exec %s >%s 2>&1 </dev/null & echo $!"):format(env, q(RUN), q(out))))
  return pid, out, dir
end

-- Four distinct free loopback ports (the kernel rarely hands one out twice
-- in a row; ten tries at most).
local function free_ports()
  for _ = 1, 10 do
    local p = { redis = raw.free_port(), a = raw.free_port(), b = raw.free_port(), nginx = raw.free_port() }
    local seen, distinct = {}, true
    for _, v in pairs(p) do
      if seen[v] then distinct = false end
      seen[v] = true
    end
    if distinct then return p end
  end
  error("no four distinct free ports in ten tries")
end

-- The cluster the script started, once it says it is ready: its pids and
-- its directory, read from what it printed.
local function start_cluster()
  local ports = free_ports()
  local pid, out, dir = launch(ports)
  local c = { pid = pid, out = out, dir = dir, ports = ports, pids = {} }
  local ready = raw.eventually(function()
    local text = server.read_file(out) or ""
    if text:find("cluster: ready", 1, true) then return "ready" end
    if not server.alive(pid) then return "dead" end
  end, 30, 0.1)
  local text = server.read_file(out) or ""
  if ready ~= "ready" then
    c.failed = true
    return c, ("examples/cluster/run did not get ready (%s); it printed:\n%s"):format(tostring(ready), text)
  end
  for line in text:gmatch("[^\n]+") do
    local name, p = line:match("^  (%S+ ?%a?) +pid (%d+) ")
    if name then name = name:gsub(" $", "") end
    if name then c.pids[name] = tonumber(p) end
  end
  c.files = text:match("files in (%S+);")
  return c
end

-- SIGTERM to the script, as Ctrl-C would; whatever is still up after that
-- is killed (a failed spec leaves nothing behind either).
local function stop_cluster(c)
  if not c then return end
  if server.alive(c.pid) then os.execute(("kill -TERM %d 2>/dev/null"):format(c.pid)) end
  raw.eventually(function() return not server.alive(c.pid) end, 20, 0.05)
  for _, p in pairs(c.pids) do
    if server.alive(p) then os.execute(("kill -KILL %d 2>/dev/null"):format(p)) end
  end
  if server.alive(c.pid) then os.execute(("kill -KILL %d 2>/dev/null"):format(c.pid)) end
  if c.files and c.files:match("^/tmp/sluice%-cluster%.") then os.execute("rm -rf " .. q(c.files)) end
  os.execute("rm -rf " .. q(c.dir))
end

-- A publish through nginx: its status, the node that took it (from nginx's
-- X-Upstream: after a failover it lists each node tried, the last one
-- answered) and the answer's JSON.
local function publish(c, text)
  local r = client.request(c.ports.nginx, "POST", "/publish", {}, text)
  local upstream = r.headers["x-upstream"] or ""
  local port = tonumber(upstream:match(":(%d+)$"))
  local ok, body = pcall(cjson.decode, r.body)
  return r.status, port, ok and body or r.body
end

local function stream(c, headers)
  local s = client.stream(c.ports.nginx, "/events", headers)
  s.upstream = tonumber((s.headers["x-upstream"] or ""):match(":(%d+)$"))
  return s
end

-- Events named "message", skipping the stream's greeting.
local function messages(s, n, timeout)
  local got = {}
  local deadline = socket.gettime() + timeout
  while #got < n do
    local ev = s:next_event(math.max(0.01, deadline - socket.gettime()))
    if not ev then break end
    if ev.event == "message" then got[#got + 1] = ev end
  end
  return got
end

-- Until the stream's node has subscribed to the channel in Redis (a stream
-- without Last-Event-ID starts from what comes next, and the subscription
-- is asynchronous): publishes through nginx until the stream gets one,
-- whichever node took it; returns the last event the stream got.
local function warm_up(c, s, text)
  local last
  for _ = 1, 10 do
    assert.equal(202, (publish(c, text)))
    last = messages(s, 1, 1)[1]
    if last then break end
  end
  assert(last, "the stream got none of 10 publishes of " .. text)
  for _, ev in ipairs(messages(s, 10, 0.3)) do last = ev end   -- one that was late
  assert.equal(text, cjson.decode(last.data).text)
  return last
end

describe("examples/cluster/run", function()
  if not installed(NGINX) then
    pending(("nginx is not installed at %s (make deps)"):format(NGINX))
    return
  end
  if os.execute("command -v redis-server >/dev/null 2>&1") ~= 0 then
    pending("redis-server is not installed (make deps)")
    return
  end

  local c, why
  setup(function() c, why = start_cluster() end)
  teardown(function() stop_cluster(c) end)

  local function node_of(port)
    return (port == c.ports.a and "a") or (port == c.ports.b and "b") or nil
  end

  it("starts Redis, two nodes and nginx on the ports it is given, and serves the page through nginx", function()
    assert(not c.failed, why)
    for _, name in ipairs { "redis-server", "node a", "node b", "nginx" } do
      assert.truthy(c.pids[name] and server.alive(c.pids[name]), name .. " is not running")
    end
    assert.equal("a\n", client.request(c.ports.a, "GET", "/node").body)
    assert.equal("b\n", client.request(c.ports.b, "GET", "/node").body)
    local page = client.request(c.ports.nginx, "GET", "/")
    assert.equal(200, page.status)
    assert.matches("text/html", page.headers["content-type"])
    assert.matches('new EventSource("/events")', page.body, 1, true)
  end)

  it("through nginx: publishes land on both nodes, and a stream gets every event once, ids increasing", function()
    assert(not c.failed, why)
    local s = stream(c)
    assert.equal(200, s.status)
    local on = node_of(s.upstream)
    assert.truthy(on, "no X-Upstream naming a node on the stream: " .. tostring(s.headers["x-upstream"]))
    local hello = s:next_event(5)
    assert.equal("hello", hello and hello.event)
    assert.equal(on, cjson.decode(hello.data).node)
    warm_up(c, s, "warm-up")
    local took, answers, want = {}, {}, {}
    for i = 1, 6 do
      local text = "event " .. i
      local status, port, body = publish(c, text)
      assert.equal(202, status)
      local node = node_of(port)
      assert.truthy(node, "no X-Upstream naming a node on publish " .. i)
      assert.equal(node, body.node)
      took[node] = (took[node] or 0) + 1
      answers[text] = body
      want[text] = node
    end
    assert.same({ a = 3, b = 3 }, took)
    local got = messages(s, 6, 10)
    assert.equal(6, #got, "the stream got " .. #got .. " of 6 events")
    local last = 0
    for _, ev in ipairs(got) do
      local m = cjson.decode(ev.data)
      assert.truthy(want[m.text], "unexpected or repeated event " .. tostring(m.text))
      assert.equal(want[m.text], m.via)
      want[m.text] = nil
      assert.truthy(tonumber(ev.id) > last, ("ids not increasing: %s after %.0f"):format(ev.id, last))
      last = tonumber(ev.id)
      -- The id the publish answered, when sluice.publish returns one.
      if answers[m.text].id then assert.equal(ev.id, answers[m.text].id) end
    end
    assert.is_nil(next(want))
    assert.equal(0, #messages(s, 1, 0.3), "an event twice")
    s:close()
  end)

  it("the node under a stream killed: the reconnect with Last-Event-ID through nginx reaches the other node and gets what was published meanwhile", function()
    assert(not c.failed, why)
    local s = stream(c)
    local on = node_of(s.upstream)
    assert.truthy(on, "no X-Upstream naming a node on the stream")
    local other = on == "a" and "b" or "a"
    local seen = warm_up(c, s, "before")

    os.execute(("kill -KILL %d"):format(c.pids["node " .. on]))
    assert.truthy(raw.eventually(function() return not server.alive(c.pids["node " .. on]) end, 5),
                  "node " .. on .. " did not die")
    local ended = raw.eventually(function()
      s:next_event(0.2)
      return s.ended
    end, 5)
    assert.truthy(ended, "the stream through nginx did not end with its node")
    s:close()

    for i = 1, 3 do
      local status, port = publish(c, "missed " .. i)
      assert.equal(202, status)
      assert.equal(other, node_of(port))
    end

    local r = stream(c, { ["Last-Event-ID"] = seen.id })
    assert.equal(200, r.status)
    assert.equal(other, node_of(r.upstream))
    local hello = r:next_event(5)
    assert.equal(other, hello and cjson.decode(hello.data).node)
    local got = messages(r, 3, 10)
    local texts, last = {}, tonumber(seen.id)
    for _, ev in ipairs(got) do
      texts[#texts + 1] = cjson.decode(ev.data).text
      assert.truthy(tonumber(ev.id) > last, "ids not increasing")
      last = tonumber(ev.id)
    end
    assert.same({ "missed 1", "missed 2", "missed 3" }, texts)
    assert.equal(0, #messages(r, 1, 0.3), "more than was missed")
    -- then live
    assert.equal(202, (publish(c, "live")))
    local ev = messages(r, 1, 5)[1]
    assert.equal("live", ev and cjson.decode(ev.data).text)
    r:close()
  end)

  it("SIGTERM (as Ctrl-C) stops everything it started and removes its files", function()
    assert(not c.failed, why)
    os.execute(("kill -TERM %d"):format(c.pid))
    assert.truthy(raw.eventually(function() return not server.alive(c.pid) end, 20, 0.05),
                  "the script did not exit on SIGTERM")
    for name, p in pairs(c.pids) do
      assert.is_false(server.alive(p), name .. " is still running")
    end
    for name, port in pairs(c.ports) do
      assert.is_false(listening(port), ("port %d (%s) is still open"):format(port, name))
    end
    assert.truthy(c.files, "the script did not say where its files are")
    assert.is_nil(io.open(c.files .. "/nginx.conf"), c.files .. " is still there")
    assert.matches("cluster: stopped", server.read_file(c.out))
  end)
end)

describe("examples/cluster/run --check", function()
  if not installed(NGINX) or os.execute("command -v redis-server >/dev/null 2>&1") ~= 0
     or os.execute("command -v curl >/dev/null 2>&1") ~= 0 then
    pending("needs nginx, redis-server and curl (make deps)")
    return
  end
  it("starts the cluster, checks it through nginx, stops it and exits 0", function()
    -- The script bounds itself: 10 s for each part to start, curl's
    -- --max-time for each request.
    local p = free_ports()
    local text = server.sh(("REDIS_PORT=%d NODE_A_PORT=%d NODE_B_PORT=%d NGINX_PORT=%d SLUICE_BIN=%s " ..
                            "NGINX_BIN=%s %s --check 2>&1 </dev/null; echo \"exit=$?\"")
                           :format(p.redis, p.a, p.b, p.nginx, q(BIN), q(NGINX), q(RUN)))
    assert(text:find("cluster: check ok", 1, true) and text:find("exit=0", 1, true),
           "examples/cluster/run --check did not pass; it printed:\n" .. text)
    assert.matches("cluster: stopped", text, 1, true)
  end)
end)
