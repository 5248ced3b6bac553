-- sluice.testing.app: the in-process mode. The apps run in this process,
-- without sockets, in the server's own code: the C module sluice_testcore
-- (built by `make testcore` from the server's sources, see
-- tests/testcore/testcore.c) holds a worker whose connections write into
-- memory files instead of sockets; the request bytes, response heads and
-- event streams are the server's, parsed here by the same client code as
-- the real-server mode (sluice.testing.http, sluice.testing.sse).
--
--   local app = testing.app{ apps = "." or { ["app.lua"] = src }, env = {...},
--                            options = { heartbeat = 15, history_len = 1000, ... } }
--   app:request{...}, app:stream(path, opts)     -- as srv:request / srv:stream
--   app:publish(channel, event) -> id, reached
--   app:advance(seconds) -> timers fired          -- the clock the test moves
--   app:now(), app:reload(), app:write_app(name, src), app:log(), app:close()
local http = require "sluice.testing.http"
local server = require "sluice.testing.server"

local M = {}
local App = {}
App.__index = App
M.App = App

local testcore

-- The module is built beside the kit's checkout (make testcore); a
-- different build can be named with SLUICE_TESTCORE.
local function load_core()
  if testcore then return testcore end
  local path = os.getenv("SLUICE_TESTCORE")
  if not path or path == "" then path = server.ROOT .. "/build/testing/sluice_testcore.so" end
  local open, err = package.loadlib(path, "luaopen_sluice_testcore")
  if not open then
    error(("sluice.testing.app: cannot load the in-process core %s (run `make testcore`): %s")
          :format(path, tostring(err)), 3)
  end
  testcore = open()
  return testcore
end

-- The one app that runs: a new one closes the previous (the server's Lua
-- state keeps its CPU budget per thread).
local current

-- In the app's state: records what each stream subscribed to (the real
-- core.subscribe is called unchanged), for stream.channels and .views.
local RECORDER = [[
local core = package.loaded["sluice.core"]
local real = core.subscribe
local subs = {}
core.subscribe = function(h, channels, views, ...)
  local c, v = {}, {}
  for i = 1, #channels do c[i] = channels[i]; v[i] = views[i] end
  local rec = subs[h] or { channels = {}, views = {} }
  for i = 1, #c do rec.channels[#rec.channels + 1] = c[i]; rec.views[#rec.views + 1] = v[i] end
  subs[h] = rec
  return real(h, channels, views, ...)
end
package.loaded["sluice.testing.recorder"] = { subs = subs }
]]

local SUBSCRIPTIONS = [[
local h = ...
local rec = package.loaded["sluice.testing.recorder"].subs[h]
if not rec then return nil end
local views = require("sluice.runtime").state.views
local names = {}
for i, id in ipairs(rec.views) do
  local v = views[id]
  names[i] = v and (v.key:match("#mask:") and "mask" or v.key:match("#([^#]*)$")) or "raw"
end
return rec.channels, names
]]

local PUBLISH = [[
return require("sluice").publish(...)
]]

-- opts: apps (a directory, loaded in place, or { ["name.lua"] = source }),
-- apps_dir, env, options (heartbeat, retry, history_len, history_ttl,
-- max_history_bytes, max_queued_bytes, max_body_bytes, max_header_bytes,
-- max_headers, lua_cpu_budget, lua_memory: the command-line options'
-- values), clock (epoch seconds to start at; default now), lua_path.
function M.new(opts)
  opts = opts or {}
  local core = load_core()
  if current then current:close() end
  local dir, apps = nil, opts.apps_dir
  if not apps then
    if type(opts.apps) == "string" then
      apps = opts.apps
    else
      dir = server.tmpdir()
      apps = dir .. "/apps"
      os.execute("mkdir -p " .. server.quote(apps))
      for name, src in pairs(opts.apps or {}) do server.write_file(apps .. "/" .. name, src) end
    end
  end
  local env = {}
  for k, v in pairs(opts.env or {}) do env[k] = tostring(v) end
  local handle, problems = core.new { apps_dir = apps, lua_dir = opts.lua_path or (server.ROOT .. "/lua"),
                                      env = env, options = opts.options, clock = opts.clock }
  local self = setmetatable({ core = handle, apps = apps, dir = dir, problems = problems }, App)
  current = self
  if problems < 0 then
    local text = handle:log()
    self:close()
    error("sluice.testing.app: the runtime did not start:\n" .. text, 2)
  end
  local _, err = handle:eval(RECORDER)
  if err then error(err, 2) end
  return self
end

function App:close()
  if self.closed then return end
  self.closed = true
  self.final_log = self.core:log()
  self.core:close()
  if current == self then current = nil end
  if self.dir then os.execute("rm -rf " .. server.quote(self.dir)) end
end
App.stop = App.close   -- as srv:stop()

function App:log()
  if self.closed then return self.final_log end
  return self.core:log()
end

-- Runs fn(app); when it raises, the app's log is appended to the error.
function App:guard(fn, ...)
  local args = { n = select("#", ...), ... }
  local ok, err = xpcall(function() return fn(self, unpack(args, 1, args.n)) end, debug.traceback)
  if not ok then error(("%s\n---- sluice log (in-process) ----\n%s"):format(tostring(err), self:log()), 0) end
end

-- ---- the wire: a connection without a socket ----------------------------

-- A sluice.testing.http connection whose bytes come from the app's core.
-- Nothing arrives without the test acting, so nothing waits.
local Wire = setmetatable({}, { __index = http.Conn })
Wire.__index = Wire

local function wire(app)
  return setmetatable({ app = app, id = app.core:connect(), buf = "", closed = false }, Wire)
end

function Wire:send(bytes)
  self.app.core:send(self.id, bytes)
  return true
end

function Wire:fill()
  if self.closed then return false end
  local bytes, server_closed = self.app.core:recv(self.id)
  if #bytes > 0 then self.buf = self.buf .. bytes end
  if server_closed then self.closed = true end
  return #bytes > 0
end

function Wire:want(what)
  local function have()
    if type(what) == "number" then return #self.buf >= what end
    return string.find(self.buf, what, 1, true) ~= nil
  end
  if have() then return true end
  self:fill()
  return have()
end

function Wire:close()
  if not self.hung_up then
    self.hung_up = true
    self.app.core:hangup(self.id)
  end
  self.closed = true
end

-- ---- requests and streams --------------------------------------------------

function App:request(opts, path)
  if type(opts) == "string" then opts = { method = opts, path = path } end
  return http.exchange(wire(self), opts or {}, 2)
end

function App:get(path, opts)
  return self:request(setmetatable({ method = "GET", path = path }, { __index = opts or {} }))
end

function App:post(path, body, opts)
  return self:request(setmetatable({ method = "POST", path = path, body = body }, { __index = opts or {} }))
end

-- A stream: sluice.testing.http's EventSource client on a wire, plus what
-- the server knows of it. Its events are there as soon as the call that
-- caused them returns: next() never waits.
local Stream = setmetatable({}, { __index = http.Stream })
Stream.__index = Stream
M.Stream = Stream

function Stream:connect()
  return wire(self.app)
end

function Stream:open()
  http.Stream.open(self)
  self.channels, self.views = {}, {}
  if not self.refused then
    local _, handle = self.app.core:conn_state(self.conn.id)
    if handle then
      local chans, names = self.app.core:eval(SUBSCRIPTIONS, handle)
      for i, ch in ipairs(chans or {}) do
        self.channels[i] = ch
        self.views[ch] = names[i]
      end
    end
    self:fill()
  end
  return self
end

function Stream:fill()
  if self.ended then return false end
  self.conn:fill()
  return self:pump()
end

-- The next event sent so far, or nil and "timeout" (none yet: the
-- real-server mode's word, so specs run either way), "ended" or "refused".
function Stream:next()
  if #self.queue == 0 then self:fill() end
  if #self.queue == 0 then
    if self.ended then return nil, self.refused and "refused" or "ended" end
    return nil, "timeout"
  end
  return table.remove(self.queue, 1)
end

-- Every event sent to it so far (also the ones next() returned).
function Stream:events()
  self:fill()
  return self.received
end

function Stream:wait_closed()
  self:fill()
  return self.ended
end

function Stream:wait_comments()
  self:fill()
  return #self.comments
end

-- Reconnects at once (the retry hint is the test's to honour with
-- app:advance).
function Stream:reconnect()
  return http.Stream.reconnect(self, { wait = false })
end

function App:stream(path, opts)
  local s = setmetatable({ app = self, path = path, opts = opts or {}, parser = require("sluice.testing.sse").parser(),
                           queue = {}, received = {} }, Stream)
  s.comments = s.parser.comments
  return s:open()
end

-- ---- the app's side ------------------------------------------------------------

-- Publishes as a script's sluice.publish does: event is { event=, data= }
-- (a table data is sent as JSON) or just the data. -> id (string), reached
function App:publish(channel, event)
  local id, reached = self.core:eval(PUBLISH, channel, event)
  if id == nil then error(reached, 2) end
  return id, reached
end

-- Moves the clock: every timer due meanwhile (app:every/after, a stream's
-- every/after, token expiry) fires at its time, in order. -> timers fired
function App:advance(seconds)
  return self.core:advance(seconds)
end

-- The app's clock (epoch seconds; os.time() in the app is its floor).
function App:now()
  return self.core:now()
end

-- Seconds until the next timer is due, or nil.
function App:next_timer()
  return self.core:next_timer()
end

function App:reload()
  self.core:reload()
  return true
end

function App:write_app(name, src)
  server.write_file(self.apps .. "/" .. name, src)
end

function App:remove_app(name)
  assert(os.remove(self.apps .. "/" .. name))
end

-- Runs Lua code in the app's state (trusted, as the runtime): ... are
-- passed in, results come back (strings, numbers, booleans, tables).
function App:eval(code, ...)
  return self.core:eval(code, ...)
end

-- sluice.stats() as the app would see it.
function App:stats()
  return (self.core:eval("return require('sluice').stats()"))
end

return M
