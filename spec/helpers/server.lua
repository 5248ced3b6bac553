-- Starts the real sluice binary on an ephemeral loopback port with a
-- temporary apps directory, for integration specs: sluice's own specs
-- through the test kit that app authors use (sluice.testing.server), plus
-- what only sluice's own specs need: the sanitizer check at stop (make
-- asan), the old argument convention and a few process probes.
local kit = require "sluice.testing.server"
local sanitizer = require "sanitizer"

local server = {
  sh = kit.sh,
  write_file = kit.write_file,
  read_file = kit.read_file,
  tmpdir = kit.tmpdir,
}

local ROOT = os.getenv("SLUICE_ROOT") or "."
local BIN = os.getenv("SLUICE_BIN") or (ROOT .. "/sluice")

-- True while a process with this id exists (zombies included).
function server.alive(pid)
  return pid ~= nil and os.execute(("kill -0 %d 2>/dev/null"):format(pid)) == 0
end

-- These specs pass args such as "--heartbeat 0" as one element: the old
-- helper joined them into a shell command line, so split on blanks.
local function split_args(args)
  local out = {}
  for _, a in ipairs(args or {}) do
    for word in tostring(a):gmatch("%S+") do out[#out + 1] = word end
  end
  return out
end

local function fd_count(self)
  return tonumber(kit.sh(("ls /proc/%d/fd 2>/dev/null | wc -l"):format(self.pid)))
end

local function rss_kib(self)
  local status = kit.read_file(("/proc/%d/status"):format(self.pid)) or ""
  return tonumber(status:match("VmRSS:%s*(%d+)"))
end

-- A stopped server's sanitizer report (log or report files): the kit keeps
-- its directory and stop() raises, so the spec fails.
local function sanitizer_check(srv)
  return sanitizer.check_server(srv.pid, srv:log(), srv.log_path)
end

-- opts.apps = { ["name.lua"] = "source", ... }; opts.args = { "--flag", ... };
-- opts.env = "NAME=value ..." (a shell prefix); opts.bin: another binary
-- than $SLUICE_BIN; opts.dir: the directory to use (removed by stop());
-- opts.apps_dir: serve that path (e.g. a symbolic link) instead of dir/apps.
function server.start(opts)
  opts = opts or {}
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.args = split_args(opts.args)
  o.bin = opts.bin or BIN
  o.lua_path = ROOT .. "/lua"
  o.check = sanitizer_check
  -- Generous: a sanitized build checks for leaks after "sluice stopped",
  -- and a KILL then would lose the report.
  o.stop_timeout = 15
  local ok, srv = pcall(kit.start, o)
  if not ok then error(srv, 2) end
  srv.fd_count, srv.rss_kib = fd_count, rss_kib
  return srv
end

return server
