-- The app object a script builds and returns: routes, views, timers and
-- channel history settings, recorded as data. The runtime decides when they
-- take effect (at load, on reload), so a script that fails to load changes
-- nothing.
local app = {}
local App = {}
App.__index = App

function app.new()
  return setmetatable({ routes = {}, views = {}, timers = {}, histories = {} }, App)
end

function app.is_app(x)
  return getmetatable(x) == App
end

-- Route options are compiled here, while the script loads, so a bad
-- policy is a load error with the script's file and line.
local function compile_options(opts, name, level)
  local out = { variant = opts.variant }
  if opts.variant ~= nil and (type(opts.variant) ~= "string" or opts.variant == "") then
    error(name .. ": variant must be a non-empty string", level)
  end
  local function compile(mod, spec, what)
    local ok, v = pcall(function() return require(mod).new(spec) end)
    if not ok then error(("%s: %s: %s"):format(name, what, tostring(v)), level + 1) end
    return v
  end
  if opts.cors ~= nil then
    out.cors = type(opts.cors) == "table" and opts.cors.preflight and opts.cors
               or compile("sluice.cors", opts.cors, "cors")
  end
  if opts.auth ~= nil then
    if type(opts.auth) ~= "table" or type(opts.auth.algs) ~= "table" then
      error(name .. ": auth needs a table with algs = {...}", level)
    end
    if opts.auth.status ~= nil and opts.auth.status ~= 401 and opts.auth.status ~= 403 then
      error(name .. ": auth.status must be 401 or 403", level)
    end
    -- A missing secret (an unset environment variable, say) fails the
    -- load here, not every request later.
    local ok, err = pcall(require("sluice.jwt").check_opts, opts.auth)
    if not ok then error(("%s: auth: %s"):format(name, tostring(err)), level) end
    out.auth = opts.auth
  end
  if opts.rollout ~= nil then
    if type(opts.rollout) ~= "table" then error(name .. ": rollout must be a table", level) end
    local spec = {}
    for k, v in pairs(opts.rollout) do
      if k ~= "response_header" then spec[k] = v end
    end
    out.rollout = compile("sluice.rollout", spec, "rollout")
    out.rollout_spec = spec
    out.rollout_header = opts.rollout.response_header or "X-Variant"
  end
  if opts.quota ~= nil then
    local ok, q = pcall(require("sluice.quota").compile, opts.quota)
    if not ok then error(("%s: quota: %s"):format(name, tostring(q)), level) end
    out.quota = q
  end
  return out
end

local function add_route(self, kind, method, pattern, handler, opts, level)
  local name = ("%s %s"):format(method, tostring(pattern))
  if opts ~= nil and type(opts) ~= "table" then error(name .. ": options must be a table", level) end
  opts = opts or {}
  -- A table of handlers declares several variants at once.
  if type(handler) == "table" then
    local names = {}
    for vname in pairs(handler) do names[#names + 1] = vname end
    table.sort(names)
    local default = opts.rollout and opts.rollout.default or "stable"
    if not handler[default] then
      error(("%s: the handler table needs the default variant %q"):format(name, default), level)
    end
    for _, vname in ipairs(names) do
      local o = {}
      if vname == default then for k, v in pairs(opts) do o[k] = v end else o.variant = vname end
      add_route(self, kind, method, pattern, handler[vname], o, level + 1)
    end
    return self
  end
  if type(handler) ~= "function" then error(name .. ": handler must be a function", level) end
  local info = debug.getinfo(level, "Sl")
  local decl = compile_options(opts, name, level + 1)
  if decl.quota and decl.quota.streams > 0 and kind ~= "stream" then
    error(name .. ": quota.streams is for stream routes (a plain route has rate only)", level)
  end
  decl.kind, decl.method, decl.pattern, decl.handler = kind, method, pattern, handler
  decl.where = info and (info.short_src .. ":" .. (info.currentline or 0)) or "?"
  self.routes[#self.routes + 1] = decl
  return self
end

-- A plain HTTP endpoint: handler(req) returns status, body, headers.
-- opts (all optional):
--   auth    = { algs = {...}, secret | public_key, from = {...}, aud, iss,
--               leeway, status = 401 | 403, realm }   (see sluice.auth/jwt)
--   cors    = { origins = {...}, credentials, ... }   (see sluice.cors)
--   rollout = { header, key, split, default, variants, salt,
--               response_header = "X-Variant" }        (see sluice.rollout)
--   quota   = { key = fn(req) | "addr" | "user" | "tenant:X-Tenant-ID" | ...,
--               streams = n, rate = { n, per = s, burst = b }, retry_after = s }
--             (see sluice.quota)
--   variant = "green": this declaration is a candidate variant of the route
-- handler may be a table { stable = fn, green = fn } of variants.
function App:route(method, pattern, handler, opts)
  if type(method) ~= "string" or not method:match("^%u+$") then
    error("route(method, ...): method must be an upper-case HTTP method", 2)
  end
  add_route(self, "plain", method, pattern, handler, opts, 3)   -- not a tail call:
  return self                                                  -- level 3 is the script
end

for _, m in ipairs { "get", "post", "put", "patch", "delete", "options" } do
  App[m] = function(self, pattern, handler, opts)
    add_route(self, "plain", m:upper(), pattern, handler, opts, 3)
    return self
  end
end

-- An SSE stream (GET): handler(req, s) subscribes and configures s, or
-- returns a status (or sluice.reject(...)) to refuse the connection.
function App:stream(pattern, handler, opts)
  add_route(self, "stream", "GET", pattern, handler, opts, 3)
  return self
end

-- A named view: how subscribers that use it see a channel's events.
--   spec.mask       masking rules (see sluice.mask), applied to JSON data
--   spec.on_invalid what masking does with non-JSON data
--   spec.transform  function(data, event) -> data or nil (nil drops it)
-- Each event is transformed once per view, whatever the number of
-- subscribers. On hot reload the new rules apply to open streams at once.
function App:view(name, spec)
  if type(name) ~= "string" or name == "" then error("view(name, spec): name must be a string", 2) end
  spec = spec or {}
  if type(spec) ~= "table" then error("view " .. name .. ": spec must be a table", 2) end
  if spec.transform ~= nil and type(spec.transform) ~= "function" then
    error("view " .. name .. ": transform must be a function", 2)
  end
  local masker
  if spec.mask ~= nil then
    local ok, mask = pcall(require, "sluice.mask")
    if not ok then error("view " .. name .. ": masking is not available: " .. tostring(mask), 2) end
    local ok2, m = pcall(mask.compile, { rules = spec.mask, on_invalid = spec.on_invalid })
    if not ok2 then error("view " .. name .. ": " .. tostring(m), 2) end
    masker = m
  end
  self.views[name] = { name = name, masker = masker, transform = spec.transform,
                       raw = masker == nil and spec.transform == nil }
  return self
end

-- Timers that live as long as this version of the script. They run once
-- per process (in worker 0), however many workers serve: a clock app must
-- not tick once per worker. opts.every_worker = true runs one in every
-- worker instead (for per-worker state: each worker has its own Lua state).
local function timer_opts(opts, what)
  if opts == nil then return false end
  if type(opts) ~= "table" then error(what .. ": options must be a table", 3) end
  return opts.every_worker == true
end

function App:every(seconds, fn, opts)
  if type(fn) ~= "function" then error("every(seconds, fn): fn must be a function", 2) end
  self.timers[#self.timers + 1] = { after = seconds, every = seconds, fn = fn,
                                    every_worker = timer_opts(opts, "every") }
  return self
end

function App:after(seconds, fn, opts)
  if type(fn) ~= "function" then error("after(seconds, fn): fn must be a function", 2) end
  self.timers[#self.timers + 1] = { after = seconds, every = 0, fn = fn,
                                    every_worker = timer_opts(opts, "after") }
  return self
end

-- History for channels whose names start with prefix: { size = events,
-- ttl = seconds }. The longest matching prefix wins.
function App:history(prefix, opts)
  if type(prefix) ~= "string" or type(opts) ~= "table" then
    error("history(prefix, { size = n, ttl = seconds })", 2)
  end
  self.histories[#self.histories + 1] = { prefix = prefix, size = opts.size, ttl = opts.ttl }
  return self
end

return app
