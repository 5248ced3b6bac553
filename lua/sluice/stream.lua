-- The stream object a stream handler receives. Until the handler returns,
-- calls are recorded; the runtime then opens the stream, subscribes (with
-- resume) and sends what was recorded. Afterwards calls act at once.
local json = require "sluice.json"

local stream = {}
local Stream = {}
Stream.__index = Stream

-- rt: { core = ..., timers = <timer registry>, watch = fn(stream) }
-- headers: the response headers the route's policy set (may be nil).
-- The lists a handler may fill are made on first use: opening a stream is
-- the hot path of connection churn.
function stream.new(rt, handle, req, headers)
  return setmetatable({ id = handle, req = req, _rt = rt, _open = false,
                        _headers = headers or {} }, Stream)
end

local function list(s, field)
  local t = s[field]
  if not t then t = {}; s[field] = t end
  return t
end

local function check_open_time(s, what)
  if s._open then error(what .. " must be called before the handler returns", 3) end
end

function Stream:header(name, value)
  check_open_time(self, "header()")
  self._headers[name] = value
  return self
end

function Stream:retry(ms)
  check_open_time(self, "retry()")
  self._retry = assert(tonumber(ms), "retry(ms) wants a number")
  return self
end

function Stream:heartbeat(seconds)
  check_open_time(self, "heartbeat()")
  self._heartbeat = assert(tonumber(seconds), "heartbeat(seconds) wants a number")
  return self
end

-- "close" (default): a consumer over the queue cap is disconnected and
-- resumes from history when it reconnects. "drop-oldest": the oldest queued
-- events are dropped and a reset event tells the client about the gap.
function Stream:slow_consumer(policy)
  check_open_time(self, "slow_consumer()")
  if policy ~= "close" and policy ~= "drop-oldest" then
    error('slow_consumer policy must be "close" or "drop-oldest"', 2)
  end
  self._slow = policy
  return self
end

-- Name of the event that tells a client it missed events it cannot get
-- back (history expired, unknown id, dropped as a slow consumer).
function Stream:reset_event(name)
  check_open_time(self, "reset_event()")
  self._reset_event = tostring(name)
  return self
end

-- Subscribes to a channel. opts.view names a view the app declared with
-- app:view(); opts.mask gives rules inline (opts.on_invalid too). Events
-- are transformed (masked) once per view, never once per subscriber.
function Stream:subscribe(channel, opts)
  if type(channel) ~= "string" or channel == "" then
    error("subscribe(channel) wants a non-empty string", 2)
  end
  local view = self._rt.view_id(opts, self)
  if self._open then
    -- Remembered for a tag set later (sluice.disconnect{ channel = }).
    if not self._tagged then
      local channels = list(self, "_channels")
      channels[#channels + 1] = channel
    end
    return self._rt.core.subscribe(self.id, { channel }, { view })
  end
  local channels, views = list(self, "_channels"), list(self, "_views")
  channels[#channels + 1] = channel
  views[#views + 1] = view
  return self
end

local function encode_data(data)
  if type(data) == "table" then return json.encode(data) end
  if data == nil then return nil end
  return tostring(data)
end

-- Sends one event to this stream only: { event=, id=, data=, retry= }.
-- data may be a table (sent as JSON). Returns false once the stream is gone.
local function check_field(what, v)
  if v ~= nil and v:find("[\r\n]") then
    error(("cannot send event: %s contains a line break"):format(what), 3)
  end
end

function Stream:send(ev)
  if type(ev) ~= "table" then ev = { data = ev } end
  local id = ev.id ~= nil and tostring(ev.id) or nil
  check_field("event name", ev.event)
  check_field("event id", id)
  local data = encode_data(ev.data)
  if data == nil and ev.event == nil and id == nil and ev.retry == nil then data = "" end
  if not self._open then
    local pending = list(self, "_pending")
    pending[#pending + 1] = { ev.event, id, data, ev.retry }
    return true
  end
  return self._rt.core.send(self.id, ev.event, id, data, ev.retry)
end

function Stream:comment(text)
  if not self._open then
    local pending = list(self, "_pending")
    pending[#pending + 1] = { nil, nil, nil, nil, tostring(text) }
    return true
  end
  return self._rt.core.send(self.id, nil, nil, nil, nil, tostring(text))
end

function Stream:alive()
  return self._open and self._rt.core.alive(self.id) or not self._open
end

function Stream:close()
  if self._open then self._rt.core.close(self.id) else self._close_after_open = true end
end

-- Tags: what sluice.disconnect{ user = ..., tenant = ... } finds a stream
-- by, in any worker. At most 4 names per stream (1-32 of a-z, 0-9, _;
-- not channel, reason, event or data, which disconnect reads itself);
-- values strings or numbers of at most 128 bytes. Setting a name again
-- replaces its value.
local TAGS_MAX = 4
local reserved_tags = { channel = true, reason = true, event = true, data = true }

function Stream:tag(name, value)
  if type(name) ~= "string" or #name == 0 or #name > 32 or name:find("[^a-z0-9_]") then
    error("tag(name, value): name must be 1-32 of a-z, 0-9, _", 2)
  end
  if reserved_tags[name] then error(("tag name %q is reserved by sluice.disconnect"):format(name), 2) end
  if type(value) == "number" then value = ("%.17g"):format(value) end
  if type(value) ~= "string" then error("tag(name, value): value must be a string or number", 2) end
  if #value > 128 then error("tag value longer than 128 bytes", 2) end
  if not self._open then
    local tags = list(self, "_tags")
    for i = 1, #tags, 2 do
      if tags[i] == name then tags[i + 1] = value; return self end
    end
    if #tags >= 2 * TAGS_MAX then error("at most 4 tags per stream", 2) end
    tags[#tags + 1], tags[#tags + 2] = name, value
    return self
  end
  local channels = not self._tagged and self._channels or nil
  self._tagged = true
  if not self._rt.core.tag(self.id, name, value, channels) then
    error("at most 4 tags per stream", 2)
  end
  return self
end

-- Timers that belong to this stream: stopped when it closes.
function Stream:every(seconds, fn)
  return self._rt.timers.start(seconds, seconds, fn, self)
end

function Stream:after(seconds, fn)
  return self._rt.timers.start(seconds, 0, fn, self)
end

function Stream:on_close(fn)
  assert(type(fn) == "function", "on_close(fn) wants a function")
  self._on_close = self._on_close or {}
  self._on_close[#self._on_close + 1] = fn
  self._rt.watch(self)
  return self
end

return stream
