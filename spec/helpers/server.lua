-- Starts the real sluice binary on an ephemeral loopback port with a
-- temporary apps directory, for integration specs.
local socket = require "socket"
local sanitizer = require "sanitizer"

local server = {}
local Server = {}
Server.__index = Server

local ROOT = os.getenv("SLUICE_ROOT") or "."
local BIN = os.getenv("SLUICE_BIN") or (ROOT .. "/sluice")

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end
server.sh = sh

local function write_file(path, content)
  local f = assert(io.open(path, "wb"))
  f:write(content)
  f:close()
end
server.write_file = write_file

function server.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- True while a process with this id exists (zombies included).
function server.alive(pid)
  return pid ~= nil and os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == 0
end

function server.tmpdir()
  return (sh("mktemp -d /tmp/sluice-spec.XXXXXX"):gsub("%s+$", ""))
end

-- opts.apps = { ["name.lua"] = "source", ... }; opts.args = { "--flag", ... };
-- opts.bin: another binary than $SLUICE_BIN (the sanitizer check's own spec);
-- opts.dir: the directory to use (removed by stop()).
function server.start(opts)
  opts = opts or {}
  local dir = opts.dir or server.tmpdir()
  -- opts.apps_dir: serve that path (e.g. a symbolic link) instead of dir/apps.
  local apps = opts.apps_dir or (dir .. "/apps")
  if not opts.apps_dir then os.execute("mkdir -p " .. apps) end
  for name, src in pairs(opts.apps or {}) do write_file(apps .. "/" .. name, src) end
  local log = dir .. "/sluice.log"
  local args = table.concat(opts.args or {}, " ")
  local env = opts.env or ""
  local pid = sh(("%sexec %s --listen 127.0.0.1:0 --apps %s --lua-path %s/lua %s >%s 2>&1 & echo $!")
    :format(env ~= "" and (env .. " ") or "", opts.bin or BIN, apps, ROOT, args, log))
  local self = setmetatable({ dir = dir, apps = apps, log_path = log,
                              pid = tonumber(pid), host = "127.0.0.1" }, Server)
  -- The server logs the port it bound; wait for it (bounded).
  local deadline = socket.gettime() + 10
  while socket.gettime() < deadline do
    local port = self:log():match("listening on 127%.0%.0%.1:(%d+)")
    if port then
      self.port = tonumber(port)
      return self
    end
    if not self:running() then break end
    socket.sleep(0.02)
  end
  local text = self:log()
  self:stop()
  error("sluice did not start:\n" .. text)
end

function Server:log()
  local f = io.open(self.log_path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

-- Waits (bounded) until the log matches a Lua pattern.
function Server:wait_log(pattern, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  repeat
    if self:log():find(pattern) then return true end
    socket.sleep(0.02)
  until socket.gettime() > deadline
  return false
end

-- A zombie (exited, not yet reaped by init) counts as gone.
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
  os.execute(("kill -%s %d 2>/dev/null"):format(sig, self.pid))
end

-- Waits for the process to exit; returns its exit status if it was ours.
function Server:wait_exit(timeout)
  local deadline = socket.gettime() + (timeout or 10)
  while socket.gettime() < deadline do
    if not self:running() then return true end
    socket.sleep(0.02)
  end
  return false
end

-- Stops the server and removes its directory, unless it reported a
-- sanitizer error (make asan): then the log is kept, its path and the
-- report are printed, and stop() raises, so the spec fails.
function Server:stop()
  if self:running() then
    self:signal("TERM")
    -- Generous: a sanitized build checks for leaks after "sluice stopped",
    -- and a KILL then would lose the report.
    if not self:wait_exit(15) then self:signal("KILL"); self:wait_exit(2) end
  end
  local report = sanitizer.check_server(self.pid, self:log(), self.log_path)
  if report then
    io.stderr:write("\n", report, "\n")
    error(report, 2)
  end
  os.execute("rm -rf " .. self.dir)
end

function Server:fd_count()
  return tonumber(sh(("ls /proc/%d/fd 2>/dev/null | wc -l"):format(self.pid)))
end

function Server:rss_kib()
  local status = sh(("cat /proc/%d/status 2>/dev/null"):format(self.pid))
  return tonumber(status:match("VmRSS:%s*(%d+)"))
end

function Server:write_app(name, src)
  -- Write then rename, as editors do, so a reload never sees half a file.
  local tmp = self.apps .. "/." .. name .. ".tmp"
  write_file(tmp, src)
  os.rename(tmp, self.apps .. "/" .. name)
end

return server
