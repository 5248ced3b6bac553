-- What the cluster specs (spec/integration/cluster*_spec.lua) share: the
-- test app, a sluice node on a Redis (spec/helpers/redis.lua) with its
-- own key prefix, "a Redis and N nodes for this describe", and small
-- readers. A module, not globals: busted's setup/teardown/pending come
-- from require "busted", which hands out the running spec's hooks.
local cjson = require "cjson"
local luassert = require "luassert"
local raw = require "raw"
local redis = require "redis"
local server = require "server"
local socket = require "socket"

local cluster = {}

local APP_HEAD = [[
local sluice = require "sluice"
local app = sluice.app()
]]

-- The routes every cluster spec app has:
--   GET  /s?ch=a,b[&user=u]  a stream on each channel named (tagged user=u)
--   POST /pub/:ch            publishes the body; 202 { id, reached }, or
--                            503 with the error and Retry-After
--   POST /burst/:ch?n=&tag=  n publishes "<tag> <i>" in one request
--   GET  /stats              sluice.stats()
local APP_ROUTES = [[
app:stream("/s", function(req, s)
  if req.query.user then s:tag("user", req.query.user) end
  for name in (req.query.ch or "a"):gmatch("[^,]+") do s:subscribe(name) end
end)

-- Redis unreachable: nil and an error, not a raised error; the client is
-- told to come back.
app:post("/pub/:ch", function(req)
  local id, reached = sluice.publish(req.params.ch, { data = req.body })
  if not id then return 503, reached, { ["Retry-After"] = "1" } end
  return 202, { id = id, reached = reached }
end)

app:post("/burst/:ch", function(req)
  local n = tonumber(req.query.n) or 1
  for i = 1, n do
    local ok, err = sluice.publish(req.params.ch, { data = req.query.tag .. " " .. i })
    if not ok then return 503, err, { ["Retry-After"] = "1" } end
  end
  return 202, "queued " .. n
end)

app:get("/stats", function() return sluice.stats() end)
]]

-- The app script: the shared routes, after opts.history's histories
-- ({ [prefix] = size }) and before opts.routes (more Lua: routes, timers).
function cluster.app(opts)
  opts = opts or {}
  local parts = { APP_HEAD }
  local prefixes = {}
  for prefix in pairs(opts.history or {}) do prefixes[#prefixes + 1] = prefix end
  table.sort(prefixes)
  for _, prefix in ipairs(prefixes) do
    parts[#parts + 1] = ("app:history(%q, { size = %d })\n"):format(prefix, opts.history[prefix])
  end
  parts[#parts + 1] = APP_ROUTES
  if opts.routes then parts[#parts + 1] = opts.routes end
  parts[#parts + 1] = "return app\n"
  return table.concat(parts, "\n")
end

-- The key prefix of the nodes started with tag on r.
function cluster.prefix(r, tag)
  return tag .. r.port .. ":"
end

-- A node on Redis r, once it publishes through it. opts: tag (its key
-- prefix is tag .. port .. ":"), app (the script; cluster.app() if
-- absent), workers, args (more command-line arguments).
function cluster.node(r, opts)
  opts = opts or {}
  local args = { "--no-watch", "--heartbeat", "0.3", "--redis", r:url(),
                 "--redis-prefix", cluster.prefix(r, opts.tag or "t") }
  if opts.workers then
    args[#args + 1] = "--workers"
    args[#args + 1] = tostring(opts.workers)
  end
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  local srv = server.start { apps = { ["app.lua"] = opts.app or cluster.app() }, args = args }
  assert(srv:wait_log("redis: publishing through", 10, true), "node never reached Redis")
  return srv
end

cluster.MISSING = "redis-server is not installed (make deps)"

-- For the describe it is called in: without redis-server, pends with the
-- tool's name (only skips with opts.quiet: one pending line per file is
-- enough) and returns nil. Otherwise a Redis (opts.persist: one that
-- keeps its data) and opts.nodes nodes on it (default 2; opts.tag,
-- opts.app, opts.workers for all, opts.args[i] for node i), started in
-- setup and stopped in teardown (before_each/after_each with opts.each);
-- bind(c) gets them once started: c.r, c[1]..c[n], c.a = c[1], c.b = c[2].
function cluster.nodes(opts, bind)
  local busted = require "busted"
  if not redis.available() then
    if not opts.quiet then busted.pending(cluster.MISSING) end
    return nil
  end
  local c = {}
  local start, stop = busted.setup, busted.teardown
  if opts.each then start, stop = busted.before_each, busted.after_each end
  start(function()
    c.r = redis.start { persist = opts.persist }
    for i = 1, opts.nodes or 2 do
      c[i] = cluster.node(c.r, { tag = opts.tag, app = opts.app, workers = opts.workers,
                                 args = opts.args and opts.args[i] })
    end
    c.a, c.b = c[1], c[2]
    bind(c)
  end)
  stop(function()
    for i = 1, opts.nodes or 2 do
      if c[i] then c[i]:stop() end
      c[i] = nil
    end
    if c.r then
      -- A test may leave it stopped (SIGSTOP).
      if c.r.pid then os.execute(("kill -CONT %d 2>/dev/null"):format(c.r.pid)) end
      c.r:stop()
    end
    c.r = nil
  end)
  return c
end

-- Until the nodes have subscribed upstream: a publish right after opening
-- a stream may otherwise go by before the SUBSCRIBE is in place (a stream
-- without Last-Event-ID starts from what comes next).
function cluster.settle(secs) socket.sleep(secs or 0.3) end

function cluster.json(body)
  return type(body) == "table" and body or cjson.decode(body)
end

-- sluice.stats() of a node whose app has the /stats route.
function cluster.stats(srv)
  local res = srv:get("/stats")
  luassert.equal(200, res.status)
  return cluster.json(res.body)
end

-- The Redis client id of srv's subscriber connection (kind "sub") or
-- publishing connection ("pub"), named sluice-<kind>-<pid>; nil if none
-- within 5 s.
function cluster.connection_id(r, srv, kind)
  return raw.eventually(function() return r:client_id("sluice-" .. kind .. "-" .. srv.pid) end, 5)
end

return cluster
