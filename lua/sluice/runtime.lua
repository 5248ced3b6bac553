-- The runtime: loads app scripts into generations, routes requests to
-- handlers, opens streams, runs views and timers. The core calls the hooks
-- set at the bottom; every call into script code goes through core.run,
-- which enforces the CPU budget and the memory cap and catches errors.
local core = require "sluice.core"
local app = require "sluice.app"
local json = require "sluice.json"
local log = require "sluice.log"
local request = require "sluice.request"
local router = require "sluice.router"
local stream = require "sluice.stream"
local timers = require "sluice.timers"

local runtime = {}

local state = {
  dir = nil,
  scripts = {},          -- path -> record { path, content, app, _timers }
  router = router.new(),
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

local function view_id(name, s)
  if name == nil then return 0 end
  local rec = s and s._script and state.scripts[s._script]
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

local function forget_stream(s)
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

local function respond(h, status, body, headers)
  headers = headers or {}
  if type(body) == "table" then
    body = json.encode(body)
    if not has_header(headers, "content-type") then headers["Content-Type"] = "application/json" end
  elseif body ~= nil then
    body = tostring(body)
    if not has_header(headers, "content-type") then headers["Content-Type"] = "text/plain; charset=utf-8" end
  end
  core.respond(h, status, headers, body)
end

local reasons = { [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden",
                  [404] = "Not Found", [405] = "Method Not Allowed", [500] = "Internal Server Error" }

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

local function answer(h, route, r1, r2, r3)
  local status, body, headers = interpret(r1, r2, r3)
  if type(status) ~= "number" or status < 200 or status > 599 then
    log.error("%s %s: handler returned an invalid status %s", route.method, route.pattern, tostring(status))
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
  local v = req.headers["last-event-id"]
  if v == nil or v == "" then
    local q = req.query
    v = q.last_event_id or q.lastEventId
  end
  if v == nil or v == "" then return nil end
  return v:match("^%d+$") and tonumber(v) or 0   -- 0: not one of ours
end

local function open_stream(h, route, req, s)
  local ok = core.open(h, s._headers, s._retry, s._heartbeat, s._slow, s._reset_event)
  s._open = true
  if not ok then
    forget_stream(s)
    return
  end
  route.stats.streams = route.stats.streams + 1
  if s._watched then
    state.watched[h] = s
    core.watch(h)
  end
  if #s._channels > 0 then
    core.subscribe(h, s._channels, s._views, last_event_id(req))
  end
  for _, p in ipairs(s._pending) do
    core.send(h, p[1], p[2], p[3], p[4], p[5])
  end
  s._pending = nil
  if s._close_after_open then core.close(h) end
end

function runtime.dispatch(h, method, path, query, headers, body, peer)
  local route, params = state.router:find(method, path)
  if not route then
    if params then
      local allow = { Allow = table.concat(params, ", ") }
      if method == "OPTIONS" then return respond(h, 204, nil, allow) end
      return respond_status(h, 405, allow)
    end
    return respond_status(h, 404)
  end
  local req = request.new(method, path, query, headers, body, peer, params)
  req.route = route.pattern
  route.stats.requests = route.stats.requests + 1
  if route.kind == "plain" then
    local ok, r1, r2, r3 = core.run(route.handler, req)
    if not ok then return failed(h, route, req, r1) end
    return answer(h, route, r1, r2, r3)
  end
  local s = stream.new(rt, h, req)
  s._script = route.script
  local ok, r1, r2, r3 = core.run(route.handler, req, s)
  if not ok then
    forget_stream(s)
    return failed(h, route, req, r1)
  end
  if r1 ~= nil then
    forget_stream(s)
    return answer(h, route, r1, r2, r3)
  end
  open_stream(h, route, req, s)
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
  -- Each script gets its own globals: an accidental global cannot leak
  -- into another script or survive a reload.
  setfenv(chunk, setmetatable({}, { __index = _G }))
  local rec = { path = path, content = content }
  state.loading = rec
  local ok, result = core.run(chunk)
  state.loading = nil
  if not ok then return nil, result end
  if not app.is_app(result) then
    return nil, ("%s: the script must return the app (return app), got %s"):format(path, type(result))
  end
  rec.app = result
  return rec
end
runtime.current_loading = function() return state.loading end

local function route_conflicts(r, rec)
  for _, route in ipairs(rec.app.routes) do
    local ok, err = pcall(router.compile, route.pattern)
    if not ok then return ("%s: %s"):format(route.where, err) end
    if r:conflict(route.method, route.pattern) then
      return ("%s: %s %s is already declared (%s)"):format(route.where, route.method, route.pattern,
                                                         r:conflict(route.method, route.pattern))
    end
  end
end

local function add_routes(r, rec)
  for _, route in ipairs(rec.app.routes) do
    route.script = rec.path
    route.stats = route.stats or { requests = 0, errors = 0, streams = 0, rejected = {} }
    assert(r:add(route.method, route.pattern, route))
  end
end

local function activate(rec, old)
  if old then timers.stop_owned(old) end
  for _, t in ipairs(rec.app.timers) do timers.start(t.after, t.every, t.fn, rec) end
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
  local r = router.new()
  for _, path in ipairs(paths) do
    local rec = next_scripts[path]
    if rec and not changed[path] then add_routes(r, rec) end
  end
  for _, path in ipairs(paths) do
    local rec = changed[path]
    if rec then
      local clash = route_conflicts(r, rec)
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
  if check_only then return problems end
  -- Swap in the new generation.
  for path, old in pairs(state.scripts) do
    if not next_scripts[path] then timers.stop_owned(old) end
  end
  for path, rec in pairs(changed) do activate(rec, state.scripts[path]) end
  state.scripts = next_scripts
  state.router = r
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

function runtime.start(dir)
  state.dir = dir
  core.set_hooks {
    dispatch = runtime.dispatch, timer = timers.fire, closed = runtime.closed,
    transform = runtime.transform, reload = runtime.reload,
  }
  local problems = load_all(dir, false)
  local n = 0
  for _ in pairs(state.scripts) do n = n + 1 end
  log.info("loaded %d app script(s) from %s", n, dir)
  return problems
end

function runtime.check(dir)
  return load_all(dir, true)
end

function runtime.stats()
  local routes = {}
  for _, route in ipairs(state.router.routes) do
    local e = route.entry
    routes[#routes + 1] = { method = e.method, pattern = e.pattern, script = e.script,
                            requests = e.stats.requests, errors = e.stats.errors,
                            streams = e.stats.streams, rejected = e.stats.rejected,
                            variants = e.stats.variants }
  end
  local views = {}
  for _, v in ipairs(state.views) do
    views[#views + 1] = { key = v.key, events = v.events, mask_ops = v.ops, errors = v.errors }
  end
  return { routes = routes, views = views, reloads = state.stats.reloads,
           reload_failures = state.stats.reload_failures, load_errors = state.stats.load_errors }
end

return runtime
