-- sluice: the API app scripts use.
--
--   local sluice = require "sluice"
--   local app = sluice.app()
--   app:stream("/ticks", function(req, s) s:subscribe("ticks") end)
--   app:every(1, function() sluice.publish("ticks", { data = os.time() }) end)
--   return app
local core = require "sluice.core"
local app = require "sluice.app"
local json = require "sluice.json"
local log = require "sluice.log"
local runtime = require "sluice.runtime"
local timers = require "sluice.timers"

local sluice = { json = json, log = log, version = core.version }

sluice.app = app.new

local cluster = core.cluster

-- Publishes an event to a channel: ev is { event=, data= } (data may be a
-- table, sent as JSON) or just the data. Returns the event id and the
-- number of subscribers it was queued for. With --redis (several nodes)
-- the id comes from Redis: in a plain route's handler the handler waits
-- for it and gets id and the nodes the event reached; elsewhere it
-- returns true, 0 once queued; nil, "redis unavailable" when Redis cannot
-- take it (answer 503).
function sluice.publish(channel, ev)
  if type(channel) ~= "string" or channel == "" then
    error("publish(channel, event): channel must be a non-empty string", 2)
  end
  if type(ev) ~= "table" or getmetatable(ev) ~= nil then ev = { data = ev } end
  local data = ev.data
  if type(data) == "table" then data = json.encode(data)
  elseif data ~= nil then data = tostring(data) end
  local id, reached, ticket = core.publish(channel, ev.event, data,
                                          cluster and runtime.can_wait())
  if ticket then return runtime.wait_published(ticket) end
  if id == nil or id == true then return id, reached end
  return ("%.0f"):format(id), reached
end

-- Refuses a request: return sluice.reject(403) from a handler.
-- opts: { headers = {...}, body = "..." | table }
function sluice.reject(status, opts)
  if type(status) ~= "number" or status < 400 or status > 599 then
    error("reject(status): status must be a 4xx or 5xx number", 2)
  end
  opts = opts or {}
  return setmetatable({ status = status, headers = opts.headers, body = opts.body }, runtime.Reject)
end

-- Timers. Started while a script loads, a timer belongs to that version
-- of the script and stops when it is reloaded; otherwise it runs until
-- stopped (t:stop()).
function sluice.every(seconds, fn)
  return timers.start(seconds, seconds, fn, runtime.current_loading())
end

function sluice.after(seconds, fn)
  return timers.start(seconds, 0, fn, runtime.current_loading())
end

function sluice.env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end

function sluice.subscribers(channel)
  return core.subscribers(channel)
end

-- Which worker thread runs this code (0 .. sluice.workers() - 1): each
-- worker has its own Lua state, so module-level tables are per worker.
function sluice.worker_id()
  return core.worker_id
end

function sluice.workers()
  return core.workers
end

function sluice.now()
  return core.now()
end

-- Ends the streams whose tags match, on every worker: every given tag
-- must match (s:tag), and channel = "x" narrows to streams subscribed to
-- x. Each gets a final event first: `event` (default "sluice-disconnect")
-- with data {"reason": reason}. Returns how many streams it found (and
-- ended: at once in this worker, within their loop's next turn in the
-- others). At least one tag is required: untagged streams are not found.
-- With --redis it also reaches the other nodes, and a second value says
-- whether they were told (the count is this node's).
local disconnect_keys = { channel = true, reason = true, event = true }

function sluice.disconnect(spec)
  if type(spec) ~= "table" then error("disconnect{ user = ..., reason = ... } wants a table", 2) end
  local names, values = {}, {}
  for k, v in pairs(spec) do
    if not disconnect_keys[k] then
      if type(k) ~= "string" then error("disconnect: tag names must be strings", 2) end
      if type(v) == "number" then v = ("%.17g"):format(v) end
      if type(v) ~= "string" then error(("disconnect: %s must be a string or number"):format(k), 2) end
      names[#names + 1], values[#values + 1] = k, v
    end
  end
  if #names == 0 then error("disconnect needs at least one tag (user = ..., tenant = ...)", 2) end
  if #names > 12 then error("disconnect: at most 12 tags", 2) end
  local channel = spec.channel
  if channel ~= nil and (type(channel) ~= "string" or channel == "") then
    error("disconnect: channel must be a non-empty string", 2)
  end
  local event = spec.event or "sluice-disconnect"
  if type(event) ~= "string" or event == "" or event:find("[\r\n]") then
    error("disconnect: event must be a non-empty name without line breaks", 2)
  end
  local reason = spec.reason
  if reason ~= nil and type(reason) ~= "string" then error("disconnect: reason must be a string", 2) end
  local data = json.encode({ reason = reason or "disconnected" })
  return core.disconnect(names, values, channel, event, data)
end

-- Counters of the server (connections, events, memory) and of the runtime
-- (routes, views, reloads), with quotas, shedding and admin disconnects.
function sluice.stats()
  local s = core.stats()
  for k, v in pairs(core.admin_stats()) do s[k] = v end
  s.runtime = runtime.stats()
  return s
end

-- The Prometheus text format (serve it from a route): what the admin
-- listener's /metrics says, plus the Lua side's own families.
function sluice.metrics()
  return require("sluice.metrics").render(sluice.stats(), core.stats("prometheus"))
end

-- The policy toolkit, loaded on first use.
local lazy = { auth = "sluice.auth", cors = "sluice.cors", rollout = "sluice.rollout",
               mask = "sluice.mask", jwt = "sluice.jwt" }
return setmetatable(sluice, {
  __index = function(t, k)
    local mod = lazy[k]
    if not mod then return nil end
    local m = require(mod)
    rawset(t, k, m)
    return m
  end,
})
