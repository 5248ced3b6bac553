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

local function add_route(self, kind, method, pattern, handler, opts, level)
  if type(handler) ~= "function" then
    error(("%s %s: handler must be a function"):format(method, tostring(pattern)), level)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error(("%s %s: options must be a table"):format(method, tostring(pattern)), level)
  end
  local info = debug.getinfo(level, "Sl")
  self.routes[#self.routes + 1] = {
    kind = kind, method = method, pattern = pattern, handler = handler,
    opts = opts or {}, where = info and (info.short_src .. ":" .. (info.currentline or 0)) or "?",
  }
  return self
end

-- A plain HTTP endpoint: handler(req) returns status, body, headers.
function App:route(method, pattern, handler, opts)
  if type(method) ~= "string" or not method:match("^%u+$") then
    error("route(method, ...): method must be an upper-case HTTP method", 2)
  end
  return add_route(self, "plain", method, pattern, handler, opts, 3)
end

for _, m in ipairs { "get", "post", "put", "patch", "delete", "options" } do
  App[m] = function(self, pattern, handler, opts)
    return add_route(self, "plain", m:upper(), pattern, handler, opts, 3)
  end
end

-- An SSE stream (GET): handler(req, s) subscribes and configures s, or
-- returns a status (or sluice.reject(...)) to refuse the connection.
function App:stream(pattern, handler, opts)
  return add_route(self, "stream", "GET", pattern, handler, opts, 3)
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

-- Timers that live as long as this version of the script.
function App:every(seconds, fn)
  if type(fn) ~= "function" then error("every(seconds, fn): fn must be a function", 2) end
  self.timers[#self.timers + 1] = { after = seconds, every = seconds, fn = fn }
  return self
end

function App:after(seconds, fn)
  if type(fn) ~= "function" then error("after(seconds, fn): fn must be a function", 2) end
  self.timers[#self.timers + 1] = { after = seconds, every = 0, fn = fn }
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
