-- The runtime: loads app scripts into generations, routes requests to
-- handlers, opens streams, runs views and timers. The core calls the hooks
-- set at the bottom; every call into script code goes through core.run,
-- which enforces the CPU budget and the memory cap and catches errors.
local core = require "sluice.core"
local app = require "sluice.app"
local json = require "sluice.json"
local log = require "sluice.log"
local request = require "sluice.request"
local gate = require "sluice.gate"
local routes = require "sluice.routes"
local sandbox = require "sluice.sandbox"
local stream = require "sluice.stream"
local timers = require "sluice.timers"

local runtime = {}

local state = {
  dir = nil,
  scripts = {},          -- path -> record { path, content, app, _timers }
  routes = routes.new(),
  loading = nil,         -- the record whose script is running its top level
  views = {},            -- view id -> { key, apply, events, ops, errors }
  view_ids = {},         -- view key -> id
  watched = {},          -- stream handle -> stream object
  stats = { reloads = 0, reload_failures = 0, load_errors = 0 },
}
runtime.state = state

-- ---- views -----------------------------------------------------------

local function view_apply(v, data, event)
  if v.masker then
    local out, ops = v.masker:apply(data)
    v.ops = v.ops + (ops or 0)
    if out == nil then return nil end
    data = out
  end
  if v.transform then
    data = v.transform(data, event)
    if type(data) == "table" then data = json.encode(data) end
  end
  return data
end

-- The id of a view for the core: 0 is the raw payload; views with rules
-- get a stable id per (script, name), so a reload updates what open
-- streams receive.
local function set_view(key, spec)
  local id = state.view_ids[key]
  if not id then
    id = #state.views + 1
    state.view_ids[key] = id
    state.views[id] = { key = key, events = 0, ops = 0, errors = 0 }
  end
  local v = state.views[id]
  v.masker, v.transform = spec.masker, spec.transform
  return id
end

local function view_id(opts, s)
  if opts == nil then return 0 end
  local rec = s and s._script and state.scripts[s._script]
  if opts.mask ~= nil then
    -- An inline rule set: subscribers with the same rules share its view.
    local mask = require "sluice.mask"
    local ok, m = pcall(mask.compile, { rules = opts.mask, on_invalid = opts.on_invalid })
    if not ok then error("subscribe: bad mask rules: " .. tostring(m), 3) end
    return set_view((rec and rec.path or "?") .. "#mask:" .. m.key, { masker = m })
  end
  local name = opts.view
  if name == nil then return 0 end
  local spec = rec and rec.app.views[name]
  if not spec then error(("unknown view %q (declare it with app:view)"):format(tostring(name)), 3) end
  if spec.raw then return 0 end
  return set_view(rec.path .. "#" .. name, spec)
end

function runtime.transform(id, event, data)
  local v = state.views[id]
  if not v then return data end
  v.events = v.events + 1
  local ok, out = core.run(view_apply, v, data, event)
  if not ok then
    v.errors = v.errors + 1
    log.script_error("view " .. v.key .. " (event dropped for this view)", out)
    return nil
  end
  return out
end

-- ---- streams ---------------------------------------------------------

local function watch(s)
  if s._watched then return end
  s._watched = true
  if s._open then
    state.watched[s.id] = s
    core.watch(s.id)
  end
end

local rt = { core = core, timers = timers, view_id = view_id, watch = watch }
timers.on_owned = function(owner)
  if getmetatable(owner) and owner._rt then watch(owner) end
end

-- Frees what a stream set up (timers, on_close callbacks, its watch
-- entry), once, on every way a stream ends or fails to open.
local function forget_stream(s)
  if s._forgotten then return end
  s._forgotten = true
  if state.watched[s.id] == s then state.watched[s.id] = nil end
  timers.stop_owned(s)
  if s._on_close then
    for _, fn in ipairs(s._on_close) do
      local ok, err = core.run(fn, s)
      if not ok then log.script_error("on_close", err) end
    end
  end
end

function runtime.closed(handle)
  local s = state.watched[handle]
  if not s then return end
  state.watched[handle] = nil
  forget_stream(s)
end

-- ---- answering -------------------------------------------------------

local Reject = {}
Reject.__index = Reject
runtime.Reject = Reject

local function has_header(headers, name)
  for k in pairs(headers) do
    if type(k) == "string" and k:lower() == name then return true end
  end
  return false
end

-- ---- the access log -------------------------------------------------

local access_log = core.access_log
local answering   -- the request being answered (set by dispatch)

-- What the runtime adds to a request's access-log line: route, variant,
-- the app's req:log fields, and a stream's Last-Event-ID. Also without
-- the access log: route and variant label the built-in metrics.
local function note(h, req, last_raw)
  if req then
    core.access_note(h, req.route, req.variant, rawget(req, "_log"), last_raw)
  end
end

-- The ids the core made for a request (X-Request-ID, traceparent).
local function set_ids(req, id, traceparent, parent_span)
  req.id, req.traceparent, req.parent_span_id = id, traceparent, parent_span
  return req
end

local function respond(h, status, body, headers)
  if answering then note(h, answering) end
  headers = headers or {}
  if body ~= nil and not has_header(headers, "content-type") then
    headers["Content-Type"] = "text/plain; charset=utf-8"
  end
  core.respond(h, status, headers, body)
end

local reasons = { [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden",
                  [404] = "Not Found", [405] = "Method Not Allowed", [429] = "Too Many Requests",
                  [500] = "Internal Server Error", [503] = "Service Unavailable" }

local function respond_status(h, status, headers)
  respond(h, status, ("%d %s\n"):format(status, reasons[status] or ""), headers)
end

-- What a handler returned, as status, body, headers.
local function interpret(r1, r2, r3)
  if r1 == nil then return 204 end
  if getmetatable(r1) == Reject then return r1.status, r1.body, r1.headers end
  if type(r1) == "number" then return r1, r2, r3 end
  return 200, r1, r2
end

-- A plain copy of the headers a handler returned, merged with the ones
-- the route's policy added (CORS, variant): the runtime then reads only
-- plain data, never a table whose metamethods would run script code.
local function plain_headers(from, policy_headers)
  local out = {}
  if type(from) == "table" then
    for k, v in next, from do
      if type(v) == "table" then
        local list = {}
        for i = 1, #v do list[i] = rawget(v, i) end
        v = list
      end
      out[k] = v
    end
  end
  if policy_headers then
    for k, v in pairs(policy_headers) do
      if out[k] == nil then out[k] = v end
    end
  end
  return out
end

-- Turns what a handler returned into status, body (a string or nil) and
-- plain headers. Runs inside the handler's core.run: encoding a table and
-- tostring of a value may call the script's metamethods (__tostring,
-- __index, __concat...), which the CPU budget must be able to stop.
local function prepare_answer(policy_headers, r1, r2, r3)
  local status, body, headers = interpret(r1, r2, r3)
  if type(status) ~= "number" or status < 200 or status > 599 then
    return "invalid", tostring(status)
  end
  headers = plain_headers(headers, policy_headers)
  if type(body) == "table" then
    body = json.encode(body)
    if not has_header(headers, "content-type") then headers["Content-Type"] = "application/json" end
  elseif body ~= nil then
    body = tostring(body)
    if type(body) ~= "string" then error("__tostring must return a string", 0) end
  end
  return "answer", status, body, headers
end

-- Answers with what prepare_answer made of a handler's return values.
local function answer(h, route, kind, status, body, headers)
  if kind == "invalid" then
    log.error("%s %s: handler returned an invalid status %s", route.method, route.pattern, status)
    return respond_status(h, 500)
  end
  if status >= 400 then
    route.stats.rejected[status] = (route.stats.rejected[status] or 0) + 1
    if body == nil then return respond_status(h, status, headers) end
  end
  respond(h, status, body, headers)
end

local function failed(h, route, req, err)
  route.stats.errors = route.stats.errors + 1
  log.script_error(("%s %s"):format(req.method, req.path), err)
  respond_status(h, 500)
end

local function last_event_id(req)
  local v = rawget(req.headers, "last-event-id")
  if (v == nil or v == "") and req.query_string ~= "" then
    local q = req.query
    v = q.last_event_id or q.lastEventId
  end
  if v == nil or v == "" then return nil end
  return v:match("^%d+$") and tonumber(v) or 0, v   -- 0: not one of ours
end

local function open_stream(h, route, req, s)
  local last, raw
  if s._channels then last, raw = last_event_id(req) end
  note(h, req, raw)
  local ok = core.open(h, s._headers, s._retry, s._heartbeat, s._slow, s._reset_event)
  s._open = true
  if not ok then
    forget_stream(s)
    return
  end
  -- req:log on an open stream updates its line, written when it ends.
  if access_log then
    rawset(req, "_on_log", function(r) note(h, r, raw) end)
  end
  route.stats.streams = route.stats.streams + 1
  -- Tags before subscribing: the subscriptions are then recorded with them
  -- (what sluice.disconnect{ channel = } matches).
  if s._tags then
    for i = 1, #s._tags, 2 do core.tag(h, s._tags[i], s._tags[i + 1]) end
    s._tags = nil
  end
  if s._watched then
    state.watched[h] = s
    core.watch(h)
  end
  if s._channels then core.subscribe(h, s._channels, s._views, last, raw) end
  if s._pending then
    for _, p in ipairs(s._pending) do
      core.send(h, p[1], p[2], p[3], p[4], p[5])
    end
    s._pending = nil
  end
  if s._close_after_open then core.close(h) end
end

-- A CORS preflight for a path whose route has a policy, or the Allow list.
local function options(h, method, path, query, headers, peer, allowed, ids)
  for _, m in ipairs(allowed) do
    local group, params = state.routes:find(m, path)
    if group and group.main and group.main.cors then
      local req = set_ids(request.new(method, path, query, headers, "", peer, params), unpack(ids))
      req.route = group.pattern
      answering = req
      -- Library code on client input: under the CPU budget as well.
      local ok, status, hdrs = core.run(gate.preflight, group, req)
      if not ok then return failed(h, group, req, status) end
      return respond(h, status, nil, hdrs)
    end
  end
  return respond(h, 204, nil, { Allow = table.concat(allowed, ", ") })
end

-- A token that expires ends the stream then, with a retry hint, so a
-- stale token cannot hold a stream open. A far expiry (a token valid for
-- years) is waited for in steps a timer can take, re-armed each time.
local EXPIRY_STEP = 86400

local function close_on_expiry(s, claims)
  local exp = type(claims) == "table" and tonumber(claims.exp)
  if not exp or exp ~= exp or exp == math.huge then return end
  local function arm()
    local left = exp - os.time()
    s:after(math.max(0, math.min(left, EXPIRY_STEP)), function()
      if exp - os.time() > 0 then return arm() end
      core.send(s.id, nil, nil, nil, 1000, "token expired")
      core.close(s.id, "token_expired")
    end)
  end
  arm()
end

local serving_stream   -- the stream the request being served set up

-- Everything a request runs of the library and of the script, under one
-- CPU budget: the route's policy (CORS, authorization, variant), the
-- handler, and turning its answer into plain data.
local function serve(group, req, h)
  local pass, status, extra = gate.pass(group, req, h)
  if not pass then return "reject", status, extra end
  timers.running = state.scripts[pass.script]
  if group.kind == "plain" then
    return prepare_answer(pass.headers, pass.handler(req))
  end
  local s = stream.new(rt, h, req, pass.headers)
  s._script = pass.script
  serving_stream = s
  local r1, r2, r3 = pass.handler(req, s)
  if r1 ~= nil then return prepare_answer(pass.headers, r1, r2, r3) end
  if req.claims then close_on_expiry(s, req.claims) end
  return "stream"
end

-- Opens the stream a handler set up; whatever fails on the way frees all
-- the stream set up (its timers run forever otherwise).
local function start_stream(h, group, req, s)
  local ok, err = pcall(open_stream, h, group, req, s)
  if ok then return end
  group.stats.errors = group.stats.errors + 1
  log.script_error(("%s %s (stream not opened)"):format(req.method, req.path), err)
  if s._open and core.alive(h) then
    core.close(h, "script_error")
  else
    note(h, req)
    respond_status(h, 500)
  end
  forget_stream(s)
end

-- What the handler's run came to: an error, a rejection, a stream to
-- open, or an answer.
local function finish(h, group, req, ok, kind, a, b, c)
  local s = serving_stream
  serving_stream, timers.running = nil, nil
  if not ok then
    if s then forget_stream(s) end
    return failed(h, group, req, kind)
  end
  if kind == "reject" then
    group.stats.rejected[a] = (group.stats.rejected[a] or 0) + 1
    return respond_status(h, a, b)
  end
  if kind == "stream" then
    answering = nil   -- a HEAD request's answer is noted by open_stream
    return start_stream(h, group, req, s)
  end
  if s then forget_stream(s) end
  return answer(h, group, kind, a, b, c)
end

-- ---- waiting for Redis (cluster mode) ----------------------------------
-- With --redis, Redis gives a published event its id a moment later. A
-- plain route's handler runs in a coroutine the runtime owns (as
-- OpenResty's cosockets do); sluice.publish there hands the event over
-- with a ticket and yields, the request's answer waits, and the runtime
-- resumes the handler when Redis answered (runtime.published), so it
-- gets id, reached as on one node. Each resume has a CPU budget of its
-- own. Anywhere else (a script's own coroutine, a stream handler, a
-- timer, a view, on_close) a publish does not wait: true, 0. One node:
-- none of this runs.
local cluster = core.cluster
local WAIT = {}          -- what a waiting publish yields to the runtime
local handler_co         -- the handler's coroutine while it runs
local waiting = {}       -- ticket -> the request waiting for it

function runtime.can_wait()
  return handler_co ~= nil and coroutine.running() == handler_co
end

-- In the handler's coroutine: waits for Redis's answer to ticket.
function runtime.wait_published(ticket)
  -- A yield across a C call (a table.sort comparator, a gsub callback)
  -- fails: that publish is queued, with no id, as anywhere else.
  local ok, id, reached = pcall(coroutine.yield, WAIT, ticket)
  if not ok then return true, 0 end
  return id, reached
end

-- Resumes w's handler coroutine with ...: it ends (answered), fails
-- (500), or waits for another ticket (true).
local function step(w, ...)
  handler_co, timers.running, answering = w.co, w.script, w.req
  local ok, done, kind, a, b, c = core.resume(w.co, ...)
  handler_co = nil
  if ok and not done then
    if kind == WAIT then
      w.script = timers.running
      serving_stream, timers.running = nil, nil
      waiting[a] = w
      return true
    end
    ok, done = false, "the handler yielded outside a coroutine of its own"
  end
  if not ok then return finish(w.h, w.group, w.req, false, done) end
  return finish(w.h, w.group, w.req, true, kind, a, b, c)
end

local function serve_waiting(h, group, req)
  local w = { co = coroutine.create(serve), h = h, group = group, req = req }
  if step(w, group, req, h) then core.answer_later(h) end
end

-- Redis answered ticket: id, reached, or nil, "redis unavailable".
function runtime.published(ticket, id, reached)
  local w = waiting[ticket]
  if not w then return end   -- a publish that did not wait
  waiting[ticket] = nil
  -- A client gone meanwhile: the answer and the coroutine are dropped.
  if not core.answer_later(w.h) then return end
  if id then id = ("%.0f"):format(id) end
  step(w, id, reached)
  answering = nil
end

local shed_enabled = core.shed_enabled
local SHED_RETRY_AFTER = "5"   -- as a refusal over --max-conns

-- id, traceparent, parent_span: the request's ids, made by the core.
local function dispatch(h, method, path, query, headers, body, peer, id, traceparent, parent_span)
  local group, params = state.routes:find(method, path)
  if not group then
    if params then
      if method == "OPTIONS" then
        return options(h, method, path, query, headers, peer, params, { id, traceparent, parent_span })
      end
      return respond_status(h, 405, { Allow = table.concat(params, ", ") })
    end
    return respond_status(h, 404)
  end
  local req = set_ids(request.new(method, path, query, headers, body, peer, params),
                      id, traceparent, parent_span)
  req.route = group.pattern
  answering = req
  group.stats.requests = group.stats.requests + 1
  -- Load shedding: past --max-streams or --shed-queued-bytes a new stream
  -- is refused before any script runs; open ones are kept.
  if shed_enabled and group.kind == "stream" then
    local why = core.shed()
    if why then
      local shed = group.stats.shed
      if not shed then shed = {}; group.stats.shed = shed end
      shed[why] = (shed[why] or 0) + 1
      group.stats.rejected[503] = (group.stats.rejected[503] or 0) + 1
      return respond_status(h, 503, { ["Retry-After"] = SHED_RETRY_AFTER })
    end
  end
  serving_stream = nil
  if cluster and group.kind == "plain" then return serve_waiting(h, group, req) end
  local ok, kind, a, b, c = core.run(serve, group, req, h)
  return finish(h, group, req, ok, kind, a, b, c)
end

function runtime.dispatch(...)
  answering = nil
  dispatch(...)
  answering = nil
end

-- ---- loading scripts -------------------------------------------------

local function read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local content = f:read("*a")
  f:close()
  return content
end

-- Runs a script's top level; returns a record or nil, message.
local function load_script(path, content)
  local chunk, err = loadstring(content, "@" .. path)
  if not chunk then return nil, err end
  -- Compiled traces never check hooks, so script code stays interpreted
  -- while the CPU budget is on: that is what lets the budget fire.
  if core.cpu_budget_ms > 0 and jit then jit.off(chunk, true) end
  -- Each script version gets its own globals and its own copies of the
  -- standard library: an accidental global or a patched string.rep cannot
  -- leak into another script or survive a reload.
  setfenv(chunk, sandbox.env())
  local rec = { path = path, content = content }
  state.loading, timers.running = rec, rec
  local ok, result = core.run(chunk)
  state.loading, timers.running = nil, nil
  if not ok then return nil, result end
  if not app.is_app(result) then
    return nil, ("%s: the script must return the app (return app), got %s"):format(path, type(result))
  end
  rec.app = result
  return rec
end
runtime.current_loading = function() return state.loading end

local function add_routes(r, rec)
  for _, decl in ipairs(rec.app.routes) do r:add(decl, rec.path) end
end

local function activate(rec, old)
  if old then timers.stop_owned(old) end
  timers.running = rec
  -- App timers once per process: in worker 0, or everywhere if asked.
  -- In cluster mode once per service: scheduled on every node, run only
  -- on the node holding the timer lease (core.timers_active); a tick may
  -- be skipped around a takeover, never run on two nodes.
  local first = (core.worker_id or 0) == 0
  for _, t in ipairs(rec.app.timers) do
    if t.every_worker then
      timers.start(t.after, t.every, t.fn, rec)
    elseif first then
      local fn = t.fn
      timers.start(t.after, t.every, function(...)
        if core.timers_active and not core.timers_active() then return end
        return fn(...)
      end, rec)
    end
  end
  timers.running = nil
  for _, hist in ipairs(rec.app.histories) do
    core.history(hist.prefix, hist.size or 1000, hist.ttl or 600)
  end
  for name, spec in pairs(rec.app.views) do
    local key = rec.path .. "#" .. name
    if state.view_ids[key] and not spec.raw then set_view(key, spec) end
  end
end

local function list_scripts(dir)
  local names, err = core.listdir(dir)
  if not names then return nil, err end
  local paths = {}
  for _, name in ipairs(names) do
    if name:match("%.lua$") then paths[#paths + 1] = dir .. "/" .. name end
  end
  table.sort(paths)
  return paths
end

-- Loads every changed script into a new generation. A script that fails
-- keeps its previous version; the others' changes still apply. Returns the
-- number of problems.
local function load_all(dir, check_only)
  local paths, err = list_scripts(dir)
  if not paths then
    log.error("cannot read apps directory %s: %s", dir, tostring(err))
    return 1
  end
  local problems = 0
  local next_scripts, changed = {}, {}
  for _, path in ipairs(paths) do
    local content, rerr = read_file(path)
    local old = state.scripts[path]
    if not content then
      problems = problems + 1
      log.error("%s: %s", path, tostring(rerr))
      next_scripts[path] = old
    elseif old and old.content == content then
      next_scripts[path] = old
    else
      local rec, lerr = load_script(path, content)
      if rec then
        next_scripts[path] = rec
        changed[path] = rec
      else
        problems = problems + 1
        state.stats.load_errors = state.stats.load_errors + 1
        log.script_error(old and "reload failed, keeping the previous version" or "load failed", lerr)
        next_scripts[path] = old
      end
    end
  end
  -- Routes: unchanged scripts first, so a changed script that now clashes
  -- with them is the one refused.
  local r = routes.new()
  for _, path in ipairs(paths) do
    local rec = next_scripts[path]
    if rec and not changed[path] then add_routes(r, rec) end
  end
  for _, path in ipairs(paths) do
    local rec = changed[path]
    if rec then
      local clash = r:script_conflict(rec)
      if clash then
        problems = problems + 1
        log.error("%s (script not loaded)", clash)
        changed[path] = nil
        next_scripts[path] = state.scripts[path]
        if next_scripts[path] then add_routes(r, next_scripts[path]) end
      else
        add_routes(r, rec)
      end
    end
  end
  for _, g in ipairs(r:orphans()) do
    problems = problems + 1
    log.error("%s: %s %s declares variant(s) but no main route (one without variant=)",
              g.first.where, g.method, g.pattern)
  end
  if check_only then return problems end
  r:inherit_stats(state.routes)
  -- Swap in the new generation.
  for path, old in pairs(state.scripts) do
    if not next_scripts[path] then timers.stop_owned(old) end
  end
  for path, rec in pairs(changed) do activate(rec, state.scripts[path]) end
  state.scripts = next_scripts
  state.routes = r
  return problems
end

function runtime.reload()
  local t0 = os.clock()
  local problems = load_all(state.dir, false)
  state.stats.reloads = state.stats.reloads + 1
  if problems > 0 then state.stats.reload_failures = state.stats.reload_failures + 1 end
  collectgarbage()
  log.info("reload done in %.1f ms (%d problem(s))", (os.clock() - t0) * 1000, problems)
  return problems
end

-- With the CPU budget on, code a script compiles or requires later must
-- stay out of the JIT too, or a loop in it would never see the hook.
local function keep_scripts_interpreted()
  if core.cpu_budget_ms <= 0 or not jit then return end
  local function off(f, ...)
    if type(f) == "function" then jit.off(f, true) end
    return f, ...
  end
  local load, loadstring, loadfile, dofile = load, loadstring, loadfile, dofile
  _G.load = function(...) return off(load(...)) end
  _G.loadstring = function(...) return off(loadstring(...)) end
  _G.loadfile = function(...) return off(loadfile(...)) end
  _G.dofile = function(path)
    local f = assert(loadfile(path))
    jit.off(f, true)
    return f()
  end
  local searcher = package.loaders[2]
  package.loaders[2] = function(name)
    local f, extra = searcher(name)
    if type(f) == "function" and not name:match("^sluice%.") then jit.off(f, true) end
    return f, extra
  end
end

function runtime.start(dir)
  state.dir = dir
  keep_scripts_interpreted()
  sandbox.install()
  core.set_hooks {
    dispatch = runtime.dispatch, timer = timers.fire, closed = runtime.closed,
    transform = runtime.transform, reload = runtime.reload, published = runtime.published,
  }
  local problems = load_all(dir, false)
  local n = 0
  for _ in pairs(state.scripts) do n = n + 1 end
  log.info("loaded %d app script(s) from %s", n, dir)
  return problems
end

function runtime.check(dir)
  sandbox.install()
  return load_all(dir, true)
end

function runtime.stats()
  local list = {}
  for _, g in pairs(state.routes.groups) do
    local variants = {}
    for name in pairs(g.variants) do variants[#variants + 1] = name end
    table.sort(variants)
    list[#list + 1] = { method = g.method, pattern = g.pattern, script = g.main and g.main.script,
                        kind = g.kind, requests = g.stats.requests, errors = g.stats.errors,
                        streams = g.stats.streams, rejected = g.stats.rejected,
                        auth_failures = g.stats.auth_failures, served_variants = g.stats.variants,
                        quota_refused = g.stats.quota or {}, shed = g.stats.shed or {},
                        variants = variants }
  end
  table.sort(list, function(a, b) return a.pattern .. a.method < b.pattern .. b.method end)
  local views = {}
  for _, v in ipairs(state.views) do
    views[#views + 1] = { key = v.key, events = v.events, mask_ops = v.ops, errors = v.errors }
  end
  return { routes = list, views = views, timers = timers.count, timers_by_script = timers.by_script(),
           reloads = state.stats.reloads,
           reload_failures = state.stats.reload_failures, load_errors = state.stats.load_errors }
end

return runtime
