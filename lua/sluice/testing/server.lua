-- sluice.testing.server: the real sluice binary on an ephemeral loopback
-- port with a temporary apps directory, for integration specs.
--
--   local srv = server.start{ apps = "DIR" or { ["app.lua"] = src },
--                             env = { JWT_SECRET = "..." }, args = { "--heartbeat", "1" },
--                             bin = "./sluice" }
--   srv.port, srv:request{...}, srv:stream(path, opts), srv:log(), srv:stop()
--
-- Under busted, a server's log is printed (stderr) when a test that used it
-- fails, and a server a failing test started and never stopped is stopped
-- at the test's end (and any left at the end of the spec file).
local socket = require "socket"
local http = require "sluice.testing.http"

local M = {}
local Server = {}
Server.__index = Server
M.Server = Server

local function now() return socket.gettime() end

-- ---- where things are ------------------------------------------------------

local function abspath(p)
  if p:sub(1, 1) == "/" then return p end
  local pwd = os.getenv("PWD")
  if not pwd then
    local h = io.popen("pwd")
    pwd = h and h:read("*l") or "."
    if h then h:close() end
  end
  return pwd .. "/" .. p:gsub("^%./", "")
end

-- The checkout this kit belongs to: lua/sluice/testing/server.lua is 4
-- levels under it. Its lua/ is the library the server gets (--lua-path),
-- so the kit and the server's library never come from different versions.
local function kit_root()
  local src = debug.getinfo(1, "S").source
  local path = src:sub(1, 1) == "@" and src:sub(2) or "lua/sluice/testing/server.lua"
  local root = path:match("^(.*)/lua/sluice/testing/server%.lua$") or
               (path == "lua/sluice/testing/server.lua" and "." or nil)
  return abspath(root or os.getenv("SLUICE_ROOT") or ".")
end
M.ROOT = kit_root()

function M.default_bin()
  local bin = os.getenv("SLUICE_BIN")
  if bin and bin ~= "" then return bin end
  return M.ROOT .. "/sluice"
end

-- ---- shell helpers ------------------------------------------------------------

local function quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
M.quote = quote

function M.sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

function M.write_file(path, content)
  local f = assert(io.open(path, "wb"))
  assert(f:write(content))
  assert(f:close())
end

function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

function M.tmpdir()
  local d = M.sh("mktemp -d /tmp/sluice-test.XXXXXX"):gsub("%s+$", "")
  assert(d ~= "", "mktemp failed")
  return d
end

local function env_prefix(env)
  if env == nil then return "" end
  if type(env) == "string" then return env ~= "" and (env .. " ") or "" end
  local names, parts = {}, {}
  for k in pairs(env) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do
    assert(type(k) == "string" and k:match("^[%a_][%w_]*$"), "sluice.testing: bad environment name " .. tostring(k))
    parts[#parts + 1] = k .. "=" .. quote(env[k])
  end
  return table.concat(parts, " ") .. " "
end

-- ---- the busted hook ---------------------------------------------------------

local live = {}          -- servers started and not stopped
local hook               -- subscriptions, once per spec file
local in_test            -- the servers live when the running test started

-- The log of a server a failed test used: what it wrote during the test
-- when it was already running before (a server shared by a describe
-- block), else all of it.
local function print_log(srv, why, from)
  local text = srv.final_log or srv:log()
  local part = ""
  if from and from > 0 and from < #text then
    text = text:sub(from + 1)
    part = ", from this test on"
  elseif from and from > 0 then
    part = ", nothing logged during this test; the whole log"
  end
  io.stderr:write(("\n---- sluice log (%s; port %s%s) ----\n%s%s---- end of sluice log ----\n")
    :format(why, tostring(srv.port), part, text, text:sub(-1) == "\n" and "" or "\n"))
end

local function attach_busted()
  if hook ~= nil then return end
  hook = false
  local busted = package.loaded.busted
  if type(busted) ~= "table" then return end
  local ok, subscribe = pcall(function() return busted.subscribe end)
  if not ok or type(subscribe) ~= "function" then return end
  local subs = {}
  subs[#subs + 1] = { { "test", "start" }, subscribe({ "test", "start" }, function()
    in_test = {}
    for srv in pairs(live) do in_test[srv] = #srv:log() end
    return nil, true
  end) }
  subs[#subs + 1] = { { "test", "end" }, subscribe({ "test", "end" }, function(element, _, status)
    local used = in_test or {}
    in_test = nil
    if status == "success" or status == "pending" then return nil, true end
    local name = element and element.name or "?"
    for srv, from in pairs(used) do print_log(srv, ("test failed: %s"):format(name), from) end
    for srv in pairs(used) do
      -- started by this test and left running because it failed
      if srv.started_in_test and not srv.stopped then pcall(srv.stop, srv) end
    end
    return nil, true
  end) }
  subs[#subs + 1] = { { "file", "end" }, subscribe({ "file", "end" }, function()
    for srv in pairs(live) do pcall(srv.stop, srv) end
    for _, s in ipairs(subs) do pcall(busted.unsubscribe, s[2].id, s[1]) end
    return nil, true
  end) }
  hook = true
end
-- At load, so that a test that starts a server has its start seen.
attach_busted()

-- ---- starting and stopping -----------------------------------------------------

-- Copies the top-level *.lua of an app directory (what sluice loads).
local function copy_apps(from, to)
  local out = M.sh(("cp %s/*.lua %s/ 2>&1 && echo copied"):format(quote(from), quote(to)))
  if not out:find("copied", 1, true) then
    error(("sluice.testing: cannot copy the apps of %s: %s"):format(from, out), 3)
  end
end

-- opts:
--   apps      a directory (its *.lua are copied into the temporary one, so a
--             spec can write_app() without touching the project), or a table
--             { ["name.lua"] = source }
--   apps_dir  serve this directory in place instead
--   env       { NAME = "value" } for the server process (or a shell prefix)
--   args      list of extra command-line arguments, each one argument
--   bin       the binary (default $SLUICE_BIN, else sluice in the kit's checkout)
--   lua_path  the library directory (default the kit's own lua/); false: none
--   dir       the temporary directory to use (removed by stop())
--   start_timeout (10 s), stop_timeout (15 s before KILL)
--   workers   worker threads (default 1: one Lua state, as in-process; a
--             --workers in args wins)
function M.start(opts)
  opts = opts or {}
  local dir = opts.dir or M.tmpdir()
  local apps = opts.apps_dir
  if not apps then
    apps = dir .. "/apps"
    os.execute("mkdir -p " .. quote(apps))
    if type(opts.apps) == "string" then
      copy_apps(opts.apps, apps)
    else
      local names = {}
      for name in pairs(opts.apps or {}) do names[#names + 1] = name end
      table.sort(names)
      for _, name in ipairs(names) do M.write_file(apps .. "/" .. name, opts.apps[name]) end
    end
  end
  local log = dir .. "/sluice.log"
  local args = {}
  local has_workers = false
  for i, a in ipairs(opts.args or {}) do
    args[i] = quote(a)
    if tostring(a):find("--workers", 1, true) == 1 then has_workers = true end
  end
  if not has_workers then args[#args + 1] = "--workers " .. tonumber(opts.workers or 1) end
  local lua_path = opts.lua_path
  if lua_path == nil then lua_path = M.ROOT .. "/lua" end
  local bin = opts.bin or M.default_bin()
  local cmd = ("%sexec %s --listen 127.0.0.1:0 --apps %s %s %s >%s 2>&1 & echo $!")
    :format(env_prefix(opts.env), quote(bin), quote(apps),
            lua_path and ("--lua-path " .. quote(lua_path)) or "", table.concat(args, " "), quote(log))
  local pid = tonumber((M.sh(cmd):match("%d+")))
  local self = setmetatable({ dir = dir, apps = apps, log_path = log, pid = pid, bin = bin,
                              host = "127.0.0.1", keep_dir = opts.keep, check = opts.check,
                              stop_timeout = opts.stop_timeout or 15,
                              started_in_test = in_test ~= nil }, Server)
  live[self] = true
  if in_test then in_test[self] = 0 end
  -- The server logs the port it bound; wait for it (bounded).
  local deadline = now() + (opts.start_timeout or 10)
  while now() < deadline do
    local port = self:log():match("listening on 127%.0%.0%.1:(%d+)")
    if port then
      self.port = tonumber(port)
      return self
    end
    if not self:running() then break end
    socket.sleep(0.02)
  end
  local text = self:log()
  pcall(self.stop, self)
  error(("sluice did not start (%s):\n%s"):format(bin, text), 2)
end

function Server:log()
  if self.final_log then return self.final_log end
  return M.read_file(self.log_path) or ""
end

-- Waits (bounded) until the log matches a Lua pattern (plain = true: a
-- plain substring); true if it did.
function Server:wait_log(pattern, timeout, plain)
  local deadline = now() + (timeout or 5)
  repeat
    if self:log():find(pattern, 1, plain) then return true end
    socket.sleep(0.02)
  until now() > deadline
  return false
end

-- A zombie (exited, not yet reaped) counts as gone.
function Server:running()
  if not self.pid then return false end
  local f = io.open(("/proc/%d/stat"):format(self.pid), "r")
  if not f then return false end
  local stat = f:read("*a") or ""
  f:close()
  local state = stat:match("^%d+ %b() (%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end

function Server:signal(sig)
  if self.pid then os.execute(("kill -%s %d 2>/dev/null"):format(sig, self.pid)) end
end

-- Waits (bounded) for the process to exit; true if it did.
function Server:wait_exit(timeout)
  local deadline = now() + (timeout or 10)
  while now() < deadline do
    if not self:running() then return true end
    socket.sleep(0.02)
  end
  return not self:running()
end

-- SIGTERM, then SIGKILL when it has not exited within timeout seconds.
-- True if it exited on SIGTERM.
function Server:halt(timeout)
  if not self:running() then return true end
  self:signal("TERM")
  if self:wait_exit(timeout or self.stop_timeout) then return true end
  self:signal("KILL")
  self:wait_exit(2)
  return false
end

-- Stops the server cleanly and removes its directory. opts.check (given
-- at start) is called with the server after it stopped; a message it
-- returns keeps the directory and is raised. The log stays readable with
-- srv:log() after stop().
function Server:stop(timeout)
  if self.stopped then return end
  local clean = self:halt(timeout)
  self.stopped = true
  live[self] = nil
  self.final_log = M.read_file(self.log_path) or ""
  if not clean then
    self.final_log = self.final_log .. "[sluice.testing: no exit within the stop bound; killed]\n"
  end
  local problem = self.check and self.check(self)
  if problem then
    io.stderr:write("\n", problem, "\n")
    error(problem, 2)
  end
  if not self.keep_dir then os.execute("rm -rf " .. quote(self.dir)) end
end

-- Writes an app script as editors do (write, then rename), so a reload
-- never sees half a file.
function Server:write_app(name, src)
  local tmp = self.apps .. "/." .. name .. ".tmp"
  M.write_file(tmp, src)
  assert(os.rename(tmp, self.apps .. "/" .. name))
end

function Server:remove_app(name)
  assert(os.remove(self.apps .. "/" .. name))
end

-- Asks the server to reload (SIGHUP) and waits (bounded) for the log to
-- say it did.
function Server:reload(timeout)
  local function done() return select(2, self:log():gsub("reload done", "")) end
  local before = done()
  self:signal("HUP")
  local deadline = now() + (timeout or 5)
  repeat
    if done() > before then return true end
    socket.sleep(0.02)
  until now() > deadline
  return false
end

-- ---- talking to it ---------------------------------------------------------------

-- { method, path, headers, cookies, query, body (a table is sent as JSON),
--   timeout } -> { status, headers, header_list, body, json }
function Server:request(opts, path)
  if type(opts) == "string" then opts = { method = opts, path = path } end
  return http.request(self.host, self.port, opts)
end

function Server:get(path, opts)
  local o = setmetatable({ method = "GET", path = path }, { __index = opts or {} })
  return http.request(self.host, self.port, o)
end

function Server:post(path, body, opts)
  local o = setmetatable({ method = "POST", path = path, body = body }, { __index = opts or {} })
  return http.request(self.host, self.port, o)
end

-- An EventSource client on path: see sluice.testing.http's Stream.
function Server:stream(path, opts)
  return http.stream(self.host, self.port, path, opts)
end

-- Runs fn(srv); when it raises, the server log is appended to the error.
-- Outside busted, or for a server shared by many tests, this is how a
-- failure shows the log.
function Server:guard(fn, ...)
  local args = { n = select("#", ...), ... }
  local ok, err = xpcall(function() return fn(self, unpack(args, 1, args.n)) end, debug.traceback)
  if not ok then
    error(("%s\n---- sluice log (port %s) ----\n%s"):format(tostring(err), tostring(self.port), self:log()), 0)
  end
end

-- Servers started and not yet stopped (for a harness's own clean-up).
function M.stop_all()
  for srv in pairs(live) do pcall(srv.stop, srv) end
end

return M
