-- sluice.testing against the real binary: start and stop, requests,
-- streams with reconnect and Last-Event-ID, the log on failure, tokens
-- the server accepts, and the rollout answer matching the server's.
local testing = require "sluice.testing"
local server = require "server"
local socket = require "socket"

local ROOT = os.getenv("SLUICE_ROOT") or "."

local APP = [[
local sluice = require "sluice"
local app = sluice.app()
app:history("c", { size = 100, ttl = 60 })
app:stream("/s", function(req, s)
  s:subscribe("c")
  if req.query.hb then s:heartbeat(tonumber(req.query.hb)) end
end)
app:post("/p", function(req)
  local id = sluice.publish("c", { event = req.query.event or "message", data = req.body })
  return 202, { id = id }
end)
app:get("/echo", function(req)
  return 200, { query = req.query, cookie = req.cookies.session, header = req.headers["x-test"],
                secret = sluice.env("KIT_SECRET") }
end)
app:get("/boom", function() error("kit spec: deliberate failure") end)
app:stream("/auth", function(req, s) s:send { event = "who", data = req.claims.sub } end,
  { auth = { algs = { "RS256", "ES256" }, public_key = sluice.env("PUBLIC_KEY") } })
local function variant(req, s) s:send { data = req.variant } end
app:stream("/ro", { stable = variant, green = variant },
  { rollout = { header = "X-Color", variants = { "stable", "green" }, split = { green = 30 },
                key = function(req) return req.query.user end, salt = "kit" } })
return app
]]

-- The /auth route needs a key to load at all.
local function env(extra)
  local e = { PUBLIC_KEY = testing.keypair("RS256").public }
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

describe("sluice.testing (real server)", function()
  describe("a server", function()
    local srv
    lazy_setup(function()
      srv = testing.server { apps = { ["app.lua"] = APP }, env = env { KIT_SECRET = "it's \"quoted\" $HOME" },
                             args = { "--heartbeat", "0", "--retry", "1000" } }
    end)
    lazy_teardown(function() srv:stop() end)

    it("starts on an ephemeral loopback port", function()
      assert.is_number(srv.port)
      assert.is_true(srv:running())
      assert.matches("listening on 127%.0%.0%.1:" .. srv.port, srv:log())
    end)

    it("answers requests with query, cookies, headers and the environment, decoding JSON", function()
      local r = srv:request { path = "/echo", query = { a = "x y", b = "é&=" },
                              cookies = { session = "s1" }, headers = { ["X-Test"] = "h" } }
      assert.equal(200, r.status)
      assert.matches("application/json", r.headers["content-type"])
      assert.same({ a = "x y", b = "é&=" }, r.json.query)
      assert.equal("s1", r.json.cookie)
      assert.equal("h", r.json.header)
      -- a value with quotes and a $ reaches the server unchanged (no shell)
      assert.equal("it's \"quoted\" $HOME", r.json.secret)
    end)

    it("sends a table body as JSON and reads a 500 as it comes", function()
      local r = srv:request { method = "POST", path = "/p", body = { n = 1 } }
      assert.equal(202, r.status)
      assert.matches("^%d+$", r.json.id)
      assert.equal(500, srv:request { path = "/boom" }.status)
      assert.is_true(srv:wait_log("deliberate failure", 2, true))
    end)

    it("streams events with their ids, the retry hint and heartbeats", function()
      local s = srv:stream("/s", { query = { hb = 0.2 } })
      assert.equal(200, s.status)
      assert.equal("text/event-stream", s.headers["content-type"])
      local id = srv:post("/p?event=greet", "one\ntwo").json.id
      local ev = assert(s:next(2))
      assert.same({ "greet", "one\ntwo", id, id }, { ev.event, ev.data, ev.id, ev.last_event_id })
      assert.equal(1000, s.retry)
      assert.is_true(s:wait_comments(2, 3) >= 2)
      local none, why = s:next(0.1)
      assert.is_nil(none)
      assert.equal("timeout", why)
      s:close()
    end)

    it("reconnects with Last-Event-ID and gets exactly the missed events, promptly", function()
      local s = srv:stream("/s")
      srv:post("/p", "a")
      local a = assert(s:next(2))
      s:close()
      srv:post("/p", "b")
      srv:post("/p", "c")
      local t0 = socket.gettime()
      s:reconnect()
      assert.equal(a.id, s.request_headers["Last-Event-ID"])
      local missed = s:events_until(2, 3)
      assert.is_true(socket.gettime() - t0 < 1, "replay took " .. (socket.gettime() - t0) .. " s")
      assert.same({ "b", "c" }, { missed[1] and missed[1].data, missed[2] and missed[2].data })
      assert.equal(2, s.connections)
      s:close()
    end)

    it("can wait out the retry hint before reconnecting, bounded", function()
      local s = srv:stream("/s")
      s:next(0.05)
      local t0 = socket.gettime()
      s:reconnect { wait = true, max_wait = 0.3 }
      local waited = socket.gettime() - t0
      assert.is_true(waited >= 0.25 and waited < 2, "waited " .. waited)
      s:close()
    end)

    it("collects events until a predicate holds", function()
      local s = srv:stream("/s")
      for i = 1, 3 do srv:post("/p?event=e" .. i, tostring(i)) end
      local evs = s:events_until(function(ev) return ev.event == "e2" end, 3)
      assert.equal(2, #evs)
      assert.equal("3", assert(s:next(2)).data)
      s:close()
    end)

    it("reports a refused stream with its status and body", function()
      local s = srv:stream("/auth")
      assert.is_true(s.refused)
      assert.equal(401, s.status)
      assert.is_nil(s:next(0.1))
    end)
  end)

  describe("tokens", function()
    for _, alg in ipairs { "RS256", "ES256" } do
      it("mints " .. alg .. " tokens the server accepts, and forged ones it refuses", function()
        local keys = testing.keypair(alg)
        local other = alg == "RS256" and testing.keypair("ES256") or testing.keypair("RS256")
        local srv = testing.server { apps = { ["app.lua"] = APP }, env = { PUBLIC_KEY = keys.public } }
        local good = srv:stream("/auth", { headers = { Authorization = "Bearer " ..
          testing.jwt { alg = alg, key = keys, claims = { sub = "ann" }, expires_in = 60 } } })
        assert.equal(200, good.status)
        assert.equal("ann", assert(good:next(2)).data)
        good:close()
        local forged = testing.jwt { alg = other.alg, key = other, claims = { sub = "eve" } }
        assert.equal(401, srv:stream("/auth", { query = { access_token = forged } }).status)
        srv:stop()
      end)
    end

    it("mints HS256 tokens with sluice.jwt, with an expiry", function()
      local t = testing.jwt { secret = "k", claims = { sub = "1" }, expires_in = 30 }
      local claims = require("sluice.jwt").verify(t, { algs = { "HS256" }, secret = "k" })
      assert.equal("1", claims.sub)
      assert.is_true(claims.exp > os.time() and claims.exp <= os.time() + 30)
    end)
  end)

  it("answers which variant a key or a header gets, as the server does", function()
    local spec = { header = "X-Color", variants = { "stable", "green" }, split = { green = 30 },
                   key = function(req) return req.query.user end, salt = "kit" }
    local srv = testing.server { apps = { ["app.lua"] = APP }, env = env() }
    local seen = {}
    for i = 1, 40 do
      local user = "u" .. i
      local want = testing.variant(spec, user)
      seen[want] = true
      local s = srv:stream("/ro", { query = { user = user } })
      assert.equal(want, s.headers["x-variant"], user)
      s:close()
    end
    assert.is_true(seen.green and seen.stable)
    assert.same({ "green", "header" }, { testing.variant(spec, { headers = { ["x-color"] = "Green" } }) })
    assert.equal("green", srv:stream("/ro", { headers = { ["X-Color"] = "Green" } }).headers["x-variant"])
    srv:stop()
  end)

  describe("stop", function()
    it("ends the process with SIGTERM and removes its directory; the log stays readable", function()
      local srv = testing.server { apps = { ["app.lua"] = APP }, env = env() }
      local dir, pid = srv.dir, srv.pid
      srv:stop()
      assert.is_false(srv:running())
      assert.is_false(server.alive(pid) and srv:running())
      assert.is_nil(io.open(dir .. "/sluice.log"))
      assert.matches("sluice stopped", srv:log())
      srv:stop()   -- twice is harmless
    end)

    it("kills a server that ignores SIGTERM past the bound", function()
      local srv = testing.server { apps = { ["app.lua"] = APP }, env = env() }
      srv:signal("STOP")   -- a stopped process cannot act on SIGTERM
      local t0 = socket.gettime()
      srv:stop(0.3)
      assert.is_false(srv:running())
      assert.is_true(socket.gettime() - t0 < 5)
      assert.matches("killed", srv:log())
    end)

    it("raises with the log when the binary does not start", function()
      local ok, err = pcall(testing.server, { apps = { ["app.lua"] = "error('kit spec: broken app')" },
                                              start_timeout = 5 })
      -- a broken app is logged, the server still starts; a bad flag does not
      if ok then err:stop() end
      local ok2, err2 = pcall(testing.server, { apps = { ["app.lua"] = APP }, env = env(), args = { "--no-such-flag" } })
      assert.is_false(ok2)
      assert.matches("sluice did not start", err2)
      assert.matches("no%-such%-flag", err2)
    end)
  end)

  describe("the log on failure", function()
    it("is appended to the error by guard()", function()
      local srv = testing.server { apps = { ["app.lua"] = APP }, env = env() }
      local ok, err = pcall(srv.guard, srv, function(s)
        s:request { path = "/boom" }
        s:wait_log("deliberate failure", 2, true)
        error("the spec's own assertion")
      end)
      srv:stop()
      assert.is_false(ok)
      assert.matches("the spec's own assertion", err, 1, true)
      assert.matches("---- sluice log", err, 1, true)
      assert.matches("kit spec: deliberate failure", err, 1, true)
    end)

    it("is printed by busted for a failing test, and its server is stopped", function()
      local tmp = server.tmpdir()
      finally(function() os.execute("rm -rf " .. tmp) end)
      os.execute("mkdir -p " .. tmp .. "/spec")
      server.write_file(tmp .. "/app.lua", APP)
      server.write_file(tmp .. "/spec/fail_spec.lua", [[
        local testing = require "sluice.testing"
        describe("an app", function()
          it("fails on purpose", function()
            local srv = testing.server { apps = ".", env = { PUBLIC_KEY = testing.keypair("RS256").public } }
            local f = io.open(os.getenv("PID_FILE"), "w"); f:write(srv.pid); f:close()
            srv:request { path = "/boom" }
            srv:wait_log("deliberate failure", 2, true)
            assert.equal(200, srv:request { path = "/boom" }.status)
          end)
        end)
      ]])
      local bin = os.getenv("SLUICE_BIN") or (ROOT .. "/sluice")
      local out = server.sh(("PID_FILE=%s/pid %s test %s 2>&1; echo \"exit=$?\""):format(tmp, bin, tmp))
      assert.matches("exit=[1-9]", out)
      assert.matches("---- sluice log (test failed: fails on purpose", out, 1, true)
      assert.matches("kit spec: deliberate failure", out, 1, true)
      local pid = tonumber(server.read_file(tmp .. "/pid"))
      assert.is_number(pid)
      assert.is_false(server.alive(pid) and (server.read_file("/proc/" .. pid .. "/stat") or ""):match("^%d+ %b() ([^Z])") ~= nil,
                      "the failed test's server is still running")
    end)
  end)
end)
