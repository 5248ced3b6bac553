-- Script timers. Each timer belongs to an owner whose end stops it: a
-- stream (when it closes), a version of a script (when it is replaced), or
-- nobody (lives until stopped).
local core = require "sluice.core"
local log = require "sluice.log"

local timers = { by_id = {} }
local Timer = {}
Timer.__index = Timer

function Timer:stop()
  local t = timers.by_id[self.id]
  if not t then return end
  timers.by_id[self.id] = nil
  core.timer_stop(self.id)
  if t.owner and t.owner._timers then t.owner._timers[self.id] = nil end
end

-- owner: a table that gets an _timers set (stream or script record).
function timers.start(after, every, fn, owner)
  after, every = tonumber(after), tonumber(every) or 0
  if not after or after < 0 or every < 0 then error("timer intervals must be numbers >= 0", 3) end
  if type(fn) ~= "function" then error("a timer needs a function", 3) end
  local id = core.timer(after, every)
  local t = setmetatable({ id = id, fn = fn, every = every, owner = owner }, Timer)
  timers.by_id[id] = t
  if owner then
    owner._timers = owner._timers or {}
    owner._timers[id] = true
    if timers.on_owned then timers.on_owned(owner) end
  end
  return t
end

function timers.stop_owned(owner)
  if not owner._timers then return end
  for id in pairs(owner._timers) do
    local t = timers.by_id[id]
    if t then t:stop() end
  end
  owner._timers = nil
end

-- Called by the core when timer id fires.
function timers.fire(id)
  local t = timers.by_id[id]
  if not t then return end
  if t.every == 0 then
    timers.by_id[id] = nil
    if t.owner and t.owner._timers then t.owner._timers[id] = nil end
  end
  local ok, err = core.run(t.fn)
  if not ok then
    local owner = t.owner
    if owner and owner.id and owner._rt then
      -- A stream's timer failing ends that stream (principle: an error
      -- becomes a closed stream plus a log line), not the others.
      log.script_error("stream timer (stream closed)", err)
      timers.stop_owned(owner)
      core.close(owner.id)
    else
      log.script_error("timer", err)
    end
  end
end

return timers
