-- A real redis-server for cluster specs: on 127.0.0.1 with a free port,
-- in a temporary directory, stopped by the spec; no persistence unless
-- asked (redis.start{ persist = true }: an append-only file synced on
-- every write, so a SIGKILL loses nothing it answered). No spec depends
-- on a Redis that is already running.
local socket = require "socket"
local server = require "server"

local redis = {}
local Redis = {}
Redis.__index = Redis

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- Runs redis-cli against it; returns its output (trimmed).
function Redis:cli(args)
  return (server.sh(("redis-cli -h 127.0.0.1 -p %d %s 2>&1"):format(self.port, args)):gsub("%s+$", ""))
end

function Redis:wait_ready(timeout)
  local deadline = socket.gettime() + (timeout or 10)
  while socket.gettime() < deadline do
    if self:cli("PING") == "PONG" then return true end
    socket.sleep(0.05)
  end
  error("redis-server on port " .. self.port .. " did not answer PING")
end

-- (Re)starts it on the same port and directory.
function Redis:start()
  local persist = self.persist and "--appendonly yes --appendfsync always" or "--appendonly no"
  self.pid = tonumber(server.sh(("cd %s && redis-server --port %d --bind 127.0.0.1 --save '' " ..
    "%s --dir %s >> %s/redis.log 2>&1 & echo $!"):format(self.dir, self.port, persist, self.dir, self.dir)))
  self:wait_ready()
  return self
end

-- Kills it at once (SIGKILL: no chance to say goodbye to clients).
function Redis:kill()
  if self.pid then
    os.execute(("kill -9 %d 2>/dev/null; while kill -0 %d 2>/dev/null; do sleep 0.02; done"):format(self.pid, self.pid))
    self.pid = nil
  end
end

-- SHUTDOWN NOSAVE, then started again on the same port: a Redis that
-- comes back without its data (it never persists here anyway).
function Redis:restart_empty()
  self:cli("SHUTDOWN NOSAVE")
  if self.pid then
    os.execute(("while kill -0 %d 2>/dev/null; do sleep 0.02; done"):format(self.pid))
  end
  return self:start()
end

function Redis:stop()
  self:kill()
  if self.dir then os.execute("rm -rf " .. self.dir) end
  self.dir = nil
end

function Redis:url() return ("redis://127.0.0.1:%d"):format(self.port) end

function redis.available()
  return os.execute("command -v redis-server >/dev/null 2>&1") == 0
end

-- The id of the client connection named name (CLIENT SETNAME), or nil.
function Redis:client_id(name)
  for line in self:cli("CLIENT LIST"):gmatch("[^\n]+") do
    local id = line:match("^id=(%d+) ")
    if id and line:find(" name=" .. name .. " ", 1, true) then return id end
  end
  return nil
end

function redis.start(opts)
  local r = setmetatable({ port = free_port(), dir = server.tmpdir(),
                           persist = opts and opts.persist }, Redis)
  return r:start()
end

return redis
