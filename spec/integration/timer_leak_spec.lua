-- Script timers cannot pile up: a stream that fails to open frees the
-- timers it set up, a token valid for years still opens its stream, and
-- one script version holds a bounded number of timers, counted in stats.
local server = require "server"
local client = require "client"
local json = require "cjson"
local socket = require "socket"

local KEY = "timer-leak-spec-secret"

local APP = ([[
local sluice = require "sluice"
local app = sluice.app()
local ticks = 0
local function stream(req, s)
  s:every(0.05, function() ticks = ticks + 1 end)
  s:header("X-Name", req.query.name or "plain")
  s:subscribe("c")
end
app:stream("/auth-stream", stream, { auth = { secret = %q, algs = { "HS256" } } })
app:stream("/stream", stream)
app:get("/many", function(req)
  local n = tonumber(req.query.n)
  for i = 1, n do sluice.every(3600, function() end) end
  return "made " .. n
end)
app:get("/stats", function()
  local rt = sluice.stats().runtime
  return { timers = rt.timers, ticks = ticks, metrics = sluice.metrics() }
end)
return app
]]):format(KEY)

local function b64url(s)
  local mime = require "mime"
  return (mime.b64(s):gsub("+", "-"):gsub("/", "_"):gsub("=", ""))
end

local function hs256_token(claims)
  local header = b64url(json.encode { alg = "HS256", typ = "JWT" })
  local body = b64url(json.encode(claims))
  local input = header .. "." .. body
  local f = io.popen(("printf %%s '%s' | openssl dgst -sha256 -hmac '%s' -binary | base64 -w0")
    :format(input, KEY))
  local sig = f:read("*a")
  f:close()
  return input .. "." .. sig:gsub("%s+$", ""):gsub("+", "-"):gsub("/", "_"):gsub("=", "")
end

local function stats(srv)
  return json.decode(client.request(srv.port, "GET", "/stats").body)
end

describe("script timers", function()
  local srv
  setup(function() srv = server.start { apps = { ["app.lua"] = APP } } end)
  teardown(function() srv:stop() end)

  it("are freed when the stream that set them up fails to open", function()
    for _ = 1, 20 do
      local r = client.request(srv.port, "GET", "/stream?name=a%0d")
      assert.equal(500, r.status)
    end
    assert.is_true(srv:wait_log("X%-Name[^\n]*control character", 2))
    local ticks = stats(srv).ticks
    socket.sleep(0.3)
    local s = stats(srv)
    assert.equal(ticks, s.ticks, "timers of failed streams still run")
    assert.equal(0, s.timers)
  end)

  it("open a stream for a token valid for more than a year, and leave none behind", function()
    local token = hs256_token { sub = "u", exp = os.time() + 400 * 86400 }
    local s = client.stream(srv.port, "/auth-stream", { Authorization = "Bearer " .. token })
    assert.equal(200, s.status)
    assert.equal(2, stats(srv).timers)   -- the stream's own, and its expiry
    s:close()
    local n
    for _ = 1, 50 do
      n = stats(srv).timers
      if n == 0 then break end
      socket.sleep(0.05)
    end
    assert.equal(0, n)
  end)

  it("are bounded per script version, with a clear error, and counted in stats", function()
    local r = client.request(srv.port, "GET", "/many?n=20000")
    assert.equal(500, r.status)
    assert.is_true(srv:wait_log("too many timers: [^\n]*app%.lua already has 10000 running", 2))
    local s = stats(srv)
    assert.equal(10000, s.timers)
    assert.is_truthy(s.metrics:find("\nsluice_timers 10000\n", 1, true))
    assert.is_truthy(s.metrics:find('sluice_script_timers{script="[^"]*app%.lua"} 10000'))
    -- a new version of the script starts from none of its own
    srv:write_app("app.lua", APP .. "\n-- v2\n")
    assert.is_true(srv:wait_log("reload done", 3))
    socket.sleep(0.2)
    assert.equal("made 10", client.request(srv.port, "GET", "/many?n=10").body)
  end)
end)
