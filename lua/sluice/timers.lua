-- Script timers. Each timer belongs to an owner whose end stops it: a
-- stream (when it closes), a version of a script (when it is replaced), or
-- nobody (lives until stopped). Each counts against the script version
-- whose code made it, which may hold at most timers.max_per_script.
local core = require "sluice.core"
local log = require "sluice.log"

local timers = { by_id = {}, count = 0, max_per_script = 10000 }
-- The script version (record with .path) whose code is running: set by
-- the runtime around every call into a script.
timers.running = nil

local Timer = {}
Timer.__index = Timer

-- Forgets a timer that is stopped or done.
local function release(t)
  timers.by_id[t.id] = nil
  timers.count = timers.count - 1
  local rec = t.script
  if rec then rec._ntimers = rec._ntimers - 1 end
  if t.owner and t.owner._timers then t.owner._timers[t.id] = nil end
end

function Timer:stop()
  local t = timers.by_id[self.id]
  if not t then return end
  release(t)
  core.timer_stop(self.id)
end

-- owner: a table that gets an _timers set (stream or script record).
function timers.start(after, every, fn, owner)
  after, every = tonumber(after), tonumber(every) or 0
  if not after or after < 0 or every < 0 then error("timer intervals must be numbers >= 0", 3) end
  if type(fn) ~= "function" then error("a timer needs a function", 3) end
  local rec = timers.running
  if rec then
    local n = rec._ntimers or 0
    if n >= timers.max_per_script then
      error(("too many timers: %s already has %d running (the limit per script version); "
             .. "stop the ones you no longer need with t:stop()"):format(rec.path, n), 3)
    end
    rec._ntimers = n + 1
  end
  local ok, id = pcall(core.timer, after, every)
  if not ok then
    if rec then rec._ntimers = rec._ntimers - 1 end
    error(id, 3)
  end
  local t = setmetatable({ id = id, fn = fn, every = every, owner = owner, script = rec }, Timer)
  timers.by_id[id] = t
  timers.count = timers.count + 1
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

-- Live timers per script path (all versions of it).
function timers.by_script()
  local out = {}
  for _, t in pairs(timers.by_id) do
    local path = t.script and t.script.path or "(library)"
    out[path] = (out[path] or 0) + 1
  end
  return out
end

-- Called by the core when timer id fires.
function timers.fire(id)
  local t = timers.by_id[id]
  if not t then return end
  if t.every == 0 then release(t) end
  local outer = timers.running
  timers.running = t.script
  local ok, err = core.run(t.fn)
  timers.running = outer
  if not ok then
    local owner = t.owner
    if owner and owner.id and owner._rt then
      -- A stream's timer failing ends that stream (principle: an error
      -- becomes a closed stream plus a log line), not the others.
      log.script_error("stream timer (stream closed)", err)
      timers.stop_owned(owner)
      core.close(owner.id, "script_error")
    else
      log.script_error("timer", err)
    end
  end
end

return timers
