-- What app scripts see: each script version gets its own globals and its
-- own copies of the standard library tables, without the calls that would
-- block every client or end the process mid-write. This guards against a
-- careless script, not a hostile one: scripts are trusted code (see the
-- README, "What app scripts can and cannot do").
local core = require "sluice.core"
local log = require "sluice.log"

local sandbox = {}

-- A call refused to scripts: raising an error that says why, and what to
-- do instead.
local function refused(name, why)
  return function()
    error(("%s is not available to app scripts: %s"):format(name, why), 2)
  end
end

local BLOCKS = "it would block every client while it runs"

local function copy(t, except)
  local c = {}
  for k, v in pairs(t) do
    if not (except and except[k]) then c[k] = v end
  end
  return c
end

-- Where in the script a call came from (for the log).
local function caller(level)
  local info = debug.getinfo(level + 1, "Sl")
  if info and info.currentline and info.currentline > 0 then
    return ("%s:%d"):format(info.short_src, info.currentline)
  end
  return "an app script"
end

-- os.exit from a script: the drain SIGTERM begins (streams get their
-- retry hint and the terminating chunk), never a kill in mid-write.
local function script_exit(code)
  log.warn("%s called os.exit(%s): draining and exiting, as on SIGTERM", caller(2), tostring(code))
  if core.drain then core.drain() end
  error("os.exit: the server is draining and will exit (as on SIGTERM)", 2)
end

local function make_os()
  local o = copy(os, { execute = true, exit = true, setlocale = true })
  o.execute = refused("os.execute", BLOCKS .. "; run commands outside sluice and publish their results over HTTP")
  o.setlocale = refused("os.setlocale", "it changes number formatting for the whole server")
  o.exit = script_exit
  return o
end

local function make_io()
  local real = io
  local i = {
    open = real.open, write = real.write, type = real.type, tmpfile = real.tmpfile,
    stdout = real.stdout, stderr = real.stderr,
    popen = refused("io.popen", BLOCKS .. "; run commands outside sluice and publish their results over HTTP"),
    read = refused("io.read", "it reads the server's standard input and would block every client"),
    input = refused("io.input", "it changes the server's standard input"),
    output = refused("io.output", "it changes the server's standard output"),
  }
  -- io.lines(path) reads a file; io.lines() would read standard input.
  i.lines = function(path, ...)
    if path == nil then
      error("io.lines() without a file name is not available to app scripts: it reads the server's "
            .. "standard input and would block every client", 2)
    end
    return real.lines(path, ...)
  end
  -- io.close() without a file would close the server's standard output.
  i.close = function(f)
    if f == nil then error("io.close() needs a file", 2) end
    return real.close(f)
  end
  return i
end

-- Finalizers (__gc) run inside garbage collection steps, which happen in
-- any allocation, in or out of a script call, with hooks off: no CPU
-- budget could stop a finalizer that loops. So scripts get no way to set
-- one: newproxy(true) (the only pure-Lua way) is refused, and so is ffi.
local real_newproxy = newproxy
local function script_newproxy(arg)
  if arg == true then
    error("newproxy(true) is not available to app scripts: a finalizer (__gc) runs outside "
          .. "the CPU budget", 2)
  end
  return real_newproxy(arg)
end

-- Modules of the sluice library are shared by every script: a script gets
-- a read-only view of each, so `sluice.publish = f` fails instead of
-- changing every other script.
local views = setmetatable({}, { __mode = "k" })
local library = setmetatable({}, { __mode = "k" })   -- module table -> its name

local function is_library(name)
  return name == "sluice" or name:sub(1, 7) == "sluice."
end

-- The name of a module of the library, or nil for any other table.
local function library_name(t)
  local name = library[t]
  if name then return name end
  for k, v in pairs(package.loaded) do
    if type(v) == "table" and type(k) == "string" and is_library(k) then library[v] = k end
  end
  return library[t]
end

local function read_only(mod, name)
  local v = views[mod]
  if v then return v end
  local fields = {}   -- functions and module views: fixed once looked up
  v = setmetatable({}, {
    __index = function(_, k)
      local x = fields[k]
      if x ~= nil then return x end
      x = mod[k]
      local tx = type(x)
      if tx == "table" then
        local lname = library_name(x)
        if lname then x = read_only(x, lname); fields[k] = x end
      elseif tx == "function" then
        fields[k] = x
      end
      return x
    end,
    __newindex = function(_, k)
      error(("%s.%s: the sluice library is shared by every script and cannot be changed "
             .. "from one (keep your own table instead)"):format(name, tostring(k)), 2)
    end,
    __metatable = name .. " (read-only)",
  })
  views[mod] = v
  return v
end

local function script_require(name)
  if type(name) == "string" then
    if name == "ffi" or name == "sluice.core" or name == "sluice.runtime" then
      error(("require %q: not available to app scripts (it reaches past the sandbox: memory, "
             .. "finalizers outside the CPU budget, the runtime's own state)"):format(name), 2)
    end
    if name == "jit" then return sandbox.jit end
    if is_library(name) then
      local mod = require(name)
      if type(mod) == "table" then return read_only(mod, name) end
      return mod
    end
  end
  return require(name)
end

-- Message handlers of xpcall run where the error was raised. When the CPU
-- budget raised it, that is inside the budget's hook, where hooks are off:
-- a handler that loops could never be stopped. Once the budget is spent
-- the handler is skipped and the error goes on as it was.
local real_xpcall = xpcall
local function guarded_xpcall(f, handler, ...)
  local spent = core.budget_spent
  return real_xpcall(f, function(err)
    if spent and spent() then return err end
    return handler(err)
  end, ...)
end

-- Installed once, at start: what no script may change for the others.
function sandbox.install()
  -- Methods on strings ("x"):rep(3) go through the string metatable,
  -- shared by every script: point it at a table no script can reach,
  -- and hide the metatable from getmetatable("").
  local mt = getmetatable("")
  mt.__index = copy(string)
  mt.__metatable = false
  -- Files share one metatable too: a script's __tostring on it would run
  -- wherever a file is printed.
  local fmt = getmetatable(io.stdout)
  if type(fmt) == "table" then fmt.__metatable = false end
  -- Scripts and code they load share the global xpcall.
  _G.xpcall = guarded_xpcall
  -- jit without on(): compiling script code would take it out of reach
  -- of the budget's hook. Turning the JIT off or flushing is harmless.
  sandbox.jit = jit and { version = jit.version, version_num = jit.version_num, os = jit.os,
                          arch = jit.arch, status = jit.status, off = jit.off,
                          flush = jit.flush } or nil
end

-- A fresh environment for one script version: its own globals, its own
-- copies of the library tables (string.rep = f stays in this script and
-- goes with its reload).
function sandbox.env()
  local env = {
    string = copy(string), table = copy(table), math = copy(math),
    coroutine = copy(coroutine), bit = bit and copy(bit) or nil,
    os = make_os(), io = make_io(),
    debug = { traceback = debug.traceback, getinfo = debug.getinfo },
    jit = sandbox.jit,
    require = script_require, newproxy = script_newproxy, xpcall = guarded_xpcall,
  }
  env._G = env
  -- Code the script compiles runs with the script's globals, not the
  -- server's (load and friends are the JIT-off wrappers runtime installs).
  local function own(f, ...)
    if type(f) == "function" then setfenv(f, env) end
    return f, ...
  end
  env.load = function(...) return own(load(...)) end
  env.loadstring = function(...) return own(loadstring(...)) end
  env.loadfile = function(...) return own(loadfile(...)) end
  env.dofile = function(path)
    local f = assert(own(loadfile(path)))
    return f()
  end
  return setmetatable(env, { __index = _G })
end

return sandbox
